"""The target's own greedy continuations of mixture prompts: self-distillation data for drafters.

A drafter learns what its target will say, and the best record of that is the target's own output. Prompts come
from the mixture's 'train' split, one per document; the target continues each greedily, in batches with left
padding. The rows are JSON lines in `<dir>/continuations.jsonl`, written batch by batch, so an interrupted run
resumes where it stopped (ids already written are skipped):

    {"id": ..., "kind": ..., "split": "train", "prompt": str, "continuation": str,
     "prompt_ids": [int], "continuation_ids": [int], "finished": bool}

`continuation_ids` ends at the first EOS (kept, so a drafter learns to stop) and never holds padding; `finished`
says an EOS was reached before `max_new_tokens`. `<dir>/meta.json` holds the `ContinuationConfig` that wrote
them; resuming with a different one is refused, so one folder never mixes prompt lengths or targets.

    evospec-hf continuations --target gemma-3-270m --out cont/ --per-kind 200
    rows = load_continuations("cont/")            # datasets.Dataset
    seqs = continuation_chunks("cont/")           # [(kind, LongTensor prompt + continuation)]
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils import check_choice, check_format, check_int
from .corpora import SPLITS
from .mixture import KINDS, documents
from .sources import SourceMissing

ROWS_FILE = "continuations.jsonl"
META_FILE = "meta.json"
FORMAT_NAME = "evospec-continuations"
FORMAT_VERSION = 1


@dataclass
class ContinuationConfig:
    """What a continuation folder holds; saved as `meta.json` beside the rows."""

    target: str = field(default="gemma-3-270m", metadata={"help": "target name (evospec_hf.load_target) or a label"})
    per_kind: int = field(default=100, metadata={"help": "prompts per kind (fewer if the kind has fewer documents)"})
    prompt_tokens: int = field(default=64, metadata={"help": "longest prompt, in tokens (BOS included)"})
    max_new_tokens: int = field(default=128, metadata={"help": "longest continuation, in tokens"})
    split: str = field(default="train", metadata={"help": "mixture split the prompts come from"})
    seed: int = field(default=0, metadata={"help": "which documents of each kind become prompts"})
    kinds: tuple = field(default=KINDS, metadata={"help": "mixture kinds to take prompts from"})

    def __post_init__(self):
        self.kinds = tuple(self.kinds)
        for name in ("per_kind", "prompt_tokens", "max_new_tokens"):
            check_int(name, getattr(self, name))
        check_int("seed", self.seed, minimum=None)
        check_choice("split", self.split, SPLITS)
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")

    def to_dict(self) -> dict:
        return {"format": FORMAT_NAME, "version": FORMAT_VERSION, **asdict(self), "kinds": list(self.kinds)}

    @classmethod
    def from_dict(cls, data: dict) -> ContinuationConfig:
        data = dict(data)
        if "format_version" in data:  # folders written before the common fields: the same format, version 1
            data["format"], data["version"] = FORMAT_NAME, data.pop("format_version")
        check_format(data, FORMAT_NAME, FORMAT_VERSION, "a continuations folder's meta", "the meta file")
        data.pop("format"), data.pop("version")
        return cls(**data)


@dataclass(frozen=True)
class Prompt:
    """One prompt for the target: the mixture document it was cut from, and its token ids."""

    id: str
    kind: str
    split: str
    input_ids: tuple  # token ids, BOS first when the tokenizer has one


def select_prompts(tokenizer, config: ContinuationConfig) -> list[Prompt]:
    """Up to `config.per_kind` prompts of at most `config.prompt_tokens` tokens from each kind.

    A templated document is cut where its answer starts (`Document.prompt_end`), keeping the last tokens before
    it, so the target answers the question as a user would have asked it; plain text gives its first tokens, and
    documents too short to fill the prompt are passed over. Kinds whose source is missing are skipped."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    room = config.prompt_tokens - len(bos)
    prompts = []
    for kind in config.kinds:
        try:
            docs = documents(kind, config.split)
        except SourceMissing:
            continue
        order = list(range(len(docs)))
        random.Random(f"{config.seed}:{kind}").shuffle(order)
        taken = 0
        for i in order:
            if taken >= config.per_kind:
                break
            doc = docs[i]
            if doc.prompt_end > 0:
                ids = tokenizer(doc.text[: doc.prompt_end], add_special_tokens=False)["input_ids"][-room:]
            else:
                ids = tokenizer(doc.text[: room * 8], add_special_tokens=False)["input_ids"]
                if len(ids) < room:
                    continue
                ids = ids[:room]
            prompts.append(Prompt(doc.id, kind, config.split, tuple(bos + ids)))
            taken += 1
    return prompts


def _pad_id(tokenizer, model=None) -> int:
    """The tokenizer's pad id (else its EOS), or without a tokenizer the model's generation config's."""
    source = tokenizer if tokenizer is not None else model.generation_config
    if source.pad_token_id is not None:
        return source.pad_token_id
    eos = source.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    return eos if eos is not None else 0


def eos_ids(model, tokenizer) -> set:
    """Every id that ends a generation: the generation config's (some models list several) and the tokenizer's
    (`tokenizer` may be None: a model folder without one, as on a lent GPU)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return eos


def greedy_continuations(model, tokenizer, batch: list, max_new_tokens: int) -> list[list[int]]:
    """Greedy continuations of a batch of prompts (lists of token ids), left-padded into one `generate` call.

    Returns one list of new token ids per prompt, cut after its first EOS and free of padding."""
    import torch

    pad = _pad_id(tokenizer, model)
    width = max(len(p) for p in batch)
    # left padding: every prompt ends at the last column, so all continue from the same position
    input_ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in batch], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=False, num_beams=1, top_k=None, top_p=None,
            pad_token_id=pad,
        )  # fmt: skip
    eos = eos_ids(model, tokenizer)
    results = []
    for row in out[:, width:].tolist():
        kept = []
        for token in row:
            kept.append(token)
            if token in eos:  # later columns are padding generate adds after a row finished
                break
        results.append(kept)
    return results


def check_batching(model, tokenizer, prompts: list, max_new_tokens: int) -> list[dict]:
    """Generates `prompts` together and one by one; returns the ones that differ (empty when batching is exact):
    [{'index': i, 'first_difference': position, 'batched': ids, 'alone': ids}]."""
    together = greedy_continuations(model, tokenizer, prompts, max_new_tokens)
    differences = []
    for i, prompt in enumerate(prompts):
        alone = greedy_continuations(model, tokenizer, [prompt], max_new_tokens)[0]
        if alone != together[i]:
            position = next(
                (j for j, (a, b) in enumerate(zip(alone, together[i])) if a != b), min(len(alone), len(together[i]))
            )
            differences.append({"index": i, "first_difference": position, "batched": together[i], "alone": alone})
    return differences


def _existing_ids(path: Path) -> set:
    ids = set()
    if path.is_file():
        for row in _read_rows(path):
            ids.add(row["id"])
    return ids


def _read_rows(path: Path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupted write: its prompt is generated again on resume


def prepare_folder(out_dir, config: ContinuationConfig) -> Path:
    """Creates `out_dir` with `meta.json`, or checks that an existing one was written with the same config."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = out / META_FILE
    if meta.is_file():
        existing = ContinuationConfig.from_dict(json.loads(meta.read_text()))
        if existing.to_dict() != config.to_dict():
            raise ValueError(
                f"{out} holds continuations made with {existing.to_dict()}; this run asks for {config.to_dict()}. "
                "Use another folder, or the same settings to resume."
            )
    else:
        meta.write_text(json.dumps(config.to_dict(), indent=1))
    return out


def write_continuations(model, tokenizer, config: ContinuationConfig, out_dir, batch_size: int = 8, prompts=None,
                        progress: bool = True) -> dict:  # fmt: skip
    """Generates and appends the continuations not yet in `out_dir`; returns {'written', 'skipped', 'new_tokens',
    'seconds'}. `prompts` defaults to `select_prompts(tokenizer, config)`."""
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    out = prepare_folder(out_dir, config)
    rows_path = out / ROWS_FILE
    prompts = select_prompts(tokenizer, config) if prompts is None else prompts
    done = _existing_ids(rows_path)
    todo = [p for p in prompts if p.id not in done]
    # similar lengths in one batch: less padding to compute
    todo.sort(key=lambda p: (len(p.input_ids), p.id))
    eos = eos_ids(model, tokenizer)
    stats = {"written": 0, "skipped": len(prompts) - len(todo), "new_tokens": 0, "seconds": 0.0}
    with (
        open(rows_path, "a", encoding="utf-8") as f,
        tqdm(total=len(todo), disable=not progress, unit="prompt") as bar,
    ):
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            began = time.perf_counter()
            continuations = greedy_continuations(model, tokenizer, [p.input_ids for p in batch], config.max_new_tokens)
            stats["seconds"] += time.perf_counter() - began
            for prompt, ids in zip(batch, continuations):
                finished = bool(ids) and ids[-1] in eos
                row = {
                    "id": prompt.id, "kind": prompt.kind, "split": prompt.split,
                    "prompt": tokenizer.decode(prompt.input_ids, skip_special_tokens=True),
                    "continuation": tokenizer.decode(ids, skip_special_tokens=True),
                    "prompt_ids": list(prompt.input_ids), "continuation_ids": ids, "finished": finished,
                }  # fmt: skip
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                stats["new_tokens"] += len(ids)
            f.flush()  # a whole batch is on disk before the next starts: resuming loses at most one batch
            os.fsync(f.fileno())
            stats["written"] += len(batch)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{stats['new_tokens'] / max(stats['seconds'], 1e-9):.1f}")
    return stats


def read_config(directory) -> ContinuationConfig:
    """The `ContinuationConfig` a continuation folder was written with."""
    return ContinuationConfig.from_dict(json.loads((Path(directory) / META_FILE).read_text()))


def load_continuations(directory, kinds=None):
    """The rows of a continuation folder as a `datasets.Dataset` (columns as in the module docstring), in file
    order; a line cut by an interrupted write is skipped. With `kinds`, only those kinds."""
    from datasets import Dataset

    path = Path(directory) / ROWS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ROWS_FILE} in {directory}: write one with evospec-hf continuations")
    seen, rows = set(), []
    for row in _read_rows(path):
        if row["id"] in seen or (kinds is not None and row["kind"] not in kinds):
            continue  # two runs racing on one folder can both write an id: keep the first
        seen.add(row["id"])
        rows.append(row)
    columns = ("id", "kind", "split", "prompt", "continuation", "prompt_ids", "continuation_ids", "finished")
    if not rows:
        return Dataset.from_dict({c: [] for c in columns})
    return Dataset.from_list([{c: row[c] for c in columns} for row in rows])


def continuation_chunks(directory, kinds=None, split: str = "train") -> list:
    """Token sequences for training: list of (kind, LongTensor prompt_ids + continuation_ids), variable length.

    Only rows of `split` (default 'train'), so held-out prompts never leak into training by accident."""
    import torch

    rows = load_continuations(directory, kinds)
    return [
        (row["kind"], torch.tensor(row["prompt_ids"] + row["continuation_ids"], dtype=torch.long))
        for row in rows
        if row["split"] == split and row["continuation_ids"]
    ]
