"""The benchmark's prompts: a jsonl file (evospec_hf's form or Spec-Bench's), or built-in held-out sets: the four
domains, a topic switch, and requests people send to `generate` (chat, questions, math, translation, summaries).

Every prompt becomes `{"id": str, "domain": str, "input_ids": LongTensor (1, n)}`.
"""

from __future__ import annotations

import json
import os

import torch

from ..data import DOMAINS, load_domain_corpus

REQUEST_SETS = ("chat", "qa", "math", "translation", "summary")  # mixture kinds whose documents start with a request
BUILTIN_SETS = DOMAINS + ("topic-switch",) + REQUEST_SETS


def load_prompts(path: str | os.PathLike, tokenizer, chat_template: bool = False) -> list[dict]:
    """Reads one prompt per line: `{"id", "domain", "prompt"}`, or Spec-Bench's `question.jsonl` form
    (`question_id`, `category`, `turns`: the first turn is used).

    Args:
        chat_template: wrap each prompt as a user turn with the tokenizer's chat template (for instruction-tuned
            targets); otherwise the text is tokenized as it is.
    """
    prompts = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" in row:
                pid, domain, text = row.get("id", number), row.get("domain", "default"), row["prompt"]
            elif "turns" in row:
                pid, domain, text = row.get("question_id", number), row.get("category", "default"), row["turns"][0]
            else:
                raise ValueError(
                    f"{path}:{number}: expected a 'prompt' field ({{'id', 'domain', 'prompt'}}) or Spec-Bench's "
                    f"'turns' field, got keys {sorted(row)}"
                )
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}:{number}: the prompt must be a non-empty string")
            if chat_template:
                messages = [{"role": "user", "content": text}]
                ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
                ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
            else:
                ids = tokenizer(text, return_tensors="pt").input_ids
            prompts.append({"id": str(pid), "domain": str(domain), "input_ids": ids})
    if not prompts:
        raise ValueError(f"{path} holds no prompt")
    return prompts


def builtin_prompts(tokenizer, sets=BUILTIN_SETS, per_set: int = 1, prompt_tokens: int = 64) -> list[dict]:
    """Prompts cut from the held-out split of evospec_hf's domain corpora (`evospec_hf.data`), which no shipped
    drafter, router or frequency list was trained on: the first `prompt_tokens` tokens of the first `per_set`
    held-out texts long enough. 'topic-switch' is a law text whose last 16 tokens are the start of a code file, so
    the context is law and the continuation is code. The request sets ('chat', 'qa', 'math', 'translation',
    'summary') are the request parts of held-out `evospec_hf.data` mixture documents ("User: ...\nAssistant:",
    "Translate the following text ...", "Summarize in one sentence: ..."): the answer is what gets generated. A
    request longer than `prompt_tokens` keeps its start and its last 16 tokens (the text's end and "Summary:")."""
    prompts = []
    for name in sets:
        if name not in BUILTIN_SETS:
            raise ValueError(f"unknown built-in prompt set {name!r}; choose from {BUILTIN_SETS}")
        if name == "topic-switch":
            laws = _heldout_starts(tokenizer, "law", prompt_tokens - 16, per_set)
            codes = _heldout_starts(tokenizer, "code", 16, per_set, special_tokens=False)
            starts = [torch.cat([law, code], dim=-1) for law, code in zip(laws, codes)]
        elif name in REQUEST_SETS:
            starts = _heldout_requests(tokenizer, name, prompt_tokens, per_set)
        else:
            starts = _heldout_starts(tokenizer, name, prompt_tokens, per_set)
        prompts += [{"id": f"{name}-{i}", "domain": name, "input_ids": ids} for i, ids in enumerate(starts)]
    return prompts


def _heldout_starts(tokenizer, domain: str, tokens: int, count: int, special_tokens: bool = True) -> list:
    starts = []
    for row in load_domain_corpus(domain, "heldout"):
        ids = tokenizer(row["text"], return_tensors="pt", add_special_tokens=special_tokens).input_ids
        if ids.shape[1] >= tokens:
            starts.append(ids[:, :tokens])
            if len(starts) == count:
                return starts
    raise ValueError(f"only {len(starts)} held-out {domain} texts have {tokens} tokens; {count} were asked for")


def _heldout_requests(tokenizer, kind: str, tokens: int, count: int, shortest: int = 8) -> list:
    from ..data import documents

    starts = []
    for document in documents(kind, "heldout"):
        if not document.prompt_end:
            continue
        ids = tokenizer(document.text[: document.prompt_end], return_tensors="pt").input_ids
        if ids.shape[1] > tokens:  # a long text to summarise: its start and the request's last 16 tokens
            ids = torch.cat([ids[:, : tokens - 16], ids[:, -16:]], dim=-1)
        if ids.shape[1] >= shortest:
            starts.append(ids)
            if len(starts) == count:
                return starts
    raise ValueError(f"only {len(starts)} held-out {kind} requests have {shortest} tokens; {count} were asked for")
