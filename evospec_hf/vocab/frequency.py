"""Token frequency tables: the data behind the static (FR-Spec) shortlist.

A table counts how often each token id of one tokenizer occurs in a corpus. It is saved as JSON together with the
vocabulary size it was made for, so that loading it for another vocabulary fails loudly instead of drafting
nonsense ids. `evospec-hf build-static-shortlist` builds one from text files.
"""

from __future__ import annotations

import functools
import json
import os
import reprlib
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..utils import check_format, check_int, drafter_folder, is_int

FORMAT_NAME = "evospec-frequency-table"
FORMAT_VERSION = 1
TABLE_NAME = "evospec_frequency.json"  # its file name inside a drafter folder


@dataclass
class FrequencyTable:
    """Token counts of a corpus, most frequent first.

    Attributes:
        vocab_size: size of the vocabulary the ids belong to (the LM head's number of rows).
        token_ids: `torch.LongTensor` of shape `(num_seen,)`: every id seen at least once, by descending count.
        counts: `torch.LongTensor` of shape `(num_seen,)`: their counts.
        source: free text saying what corpus and tokenizer produced the table.
    """

    vocab_size: int
    token_ids: torch.Tensor
    counts: torch.Tensor
    source: str = ""

    @classmethod
    def from_token_ids(cls, sequences: Iterable[Iterable[int]], vocab_size: int, source: str = "") -> "FrequencyTable":
        """Counts token ids; `sequences` is any iterable of id sequences (lists or 1-D tensors)."""
        counts = torch.zeros(vocab_size, dtype=torch.long)
        for seq in sequences:
            ids = torch.as_tensor(seq, dtype=torch.long).flatten()
            if ids.numel() == 0:
                continue
            if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
                raise ValueError(f"token id out of range [0, {vocab_size}): {int(ids.min())}..{int(ids.max())}")
            counts += torch.bincount(ids, minlength=vocab_size)
        return cls.from_counts(counts, source)

    @classmethod
    def from_counts(cls, counts: torch.Tensor, source: str = "") -> "FrequencyTable":
        """From a `(vocab_size,)` tensor of counts."""
        seen = counts.nonzero().squeeze(1)
        # stable sort: ties keep the smaller id first, so the table is deterministic
        order = torch.sort(counts[seen], descending=True, stable=True).indices
        return cls(vocab_size=counts.numel(), token_ids=seen[order], counts=counts[seen][order], source=source)

    def top(self, n: int) -> torch.Tensor:
        """The `n` most frequent token ids (fewer if the corpus saw fewer distinct tokens)."""
        return self.token_ids[:n]

    def save_token_map(self, path: str | os.PathLike, size: int, fill: "FrequencyTable | None" = None) -> list[int]:
        """Writes the `size` most frequent ids as a serving engine's hot vocabulary: SGLang's
        `--speculative-token-map` file, a `torch.save` of a plain list of ints, which SGLang reads with
        `torch.load(path, weights_only=True)`. `fill`: a table whose ids complete the list when this one saw fewer
        than `size` distinct tokens (a session's counts in front of the static list, say). Returns the ids."""
        ids = self.top(size).tolist()
        if fill is not None and len(ids) < size:
            seen = set(ids)
            ids += [t for t in fill.token_ids.tolist() if t not in seen][: size - len(ids)]
        torch.save([int(t) for t in ids], os.fspath(path))
        return ids

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table to `path` (a .json file, or a folder: then `<folder>/evospec_frequency.json`)."""
        path = os.path.join(path, TABLE_NAME) if os.path.isdir(path) else os.fspath(path)
        data = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "vocab_size": self.vocab_size,
            "source": self.source,
            "token_ids": self.token_ids.tolist(),
            "counts": self.counts.tolist(),
        }
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written table

    @classmethod
    def load(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "FrequencyTable":
        """Loads a table; with `vocab_size`, also checks that it was made for that vocabulary.

        Parsed tables are cached per (file, modification time, size): a 262k-token table takes ~150 ms to parse,
        and every `generate` call asks for it. The same object comes back while the file is unchanged.
        """
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            path = os.path.join(path, TABLE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"static shortlist file {path!r} does not exist; build it with `evospec-hf build-static-shortlist`."
            )
        stat = os.stat(path)
        table = _load_cached(path, stat.st_mtime_ns, stat.st_size)
        if vocab_size is not None and table.vocab_size != vocab_size:
            raise ValueError(
                f"static shortlist file {path!r} was built for a vocabulary of {table.vocab_size} tokens, but the "
                f"drafter's LM head has {vocab_size}; rebuild it with the drafter's tokenizer."
            )
        return table

    @classmethod
    def _parse(cls, path: str) -> "FrequencyTable":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f"it holds {reprlib.repr(data)}, expected a JSON object with the table's fields")
            check_format(data, FORMAT_NAME, FORMAT_VERSION, "a frequency table", "the file")
            check_int("vocab_size", data["vocab_size"], minimum=1)
            table = cls(
                vocab_size=data["vocab_size"],
                token_ids=torch.tensor(_int_list(data, "token_ids"), dtype=torch.long),
                counts=torch.tensor(_int_list(data, "counts"), dtype=torch.long),
                source=str(data.get("source", "")),
            )
            if table.token_ids.shape != table.counts.shape or table.token_ids.dim() != 1:
                raise ValueError("'token_ids' and 'counts' must be lists of the same length")
            if table.token_ids.numel() and (
                int(table.token_ids.min()) < 0 or int(table.token_ids.max()) >= table.vocab_size
            ):
                raise ValueError(f"token ids fall outside the table's own vocab_size {table.vocab_size}")
            if table.token_ids.unique().numel() != table.token_ids.numel():
                raise ValueError("'token_ids' repeats an id")
        except (ValueError, KeyError, TypeError) as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"static shortlist file {path!r} is corrupt: {err}") from err
        return table


def _int_list(data: dict, key: str) -> list:
    """`data[key]`, checked to be a list of JSON integers: `torch.tensor(..., dtype=long)` would silently truncate a
    float id (3.7 -> 3) and read `true` as 1."""
    values = data[key]
    if not isinstance(values, list):
        raise ValueError(f"{key!r} must be a list of integers, got {reprlib.repr(values)}")
    if not set(map(type, values)) <= {int}:  # the fast check (a 262k-id table); bool is not int here
        position, value = next((i, v) for i, v in enumerate(values) if not is_int(v))
        raise ValueError(f"{key!r} must be a list of integers, but item {position} is {value!r}")
    return values


def resolve_static_table(
    static_shortlist_path, drafter, vocab_size: int, needed_by: str = "shortlist='static'"
) -> FrequencyTable:
    """The table for `shortlist='static'` (or what `needed_by` names): the configured path, else
    `evospec_frequency.json` in the drafter's folder."""
    if static_shortlist_path:
        return FrequencyTable.load(static_shortlist_path, vocab_size=vocab_size)
    folder = drafter_folder(drafter)
    if os.path.isfile(os.path.join(folder, TABLE_NAME)):
        return FrequencyTable.load(folder, vocab_size=vocab_size)
    raise FileNotFoundError(
        f"{needed_by} needs a token frequency table, but `static_shortlist_path` is not set and the drafter's "
        f"folder ({folder or 'none: the drafter was not loaded from a folder'!r}) has no {TABLE_NAME}. Build one "
        f"with `evospec-hf build-static-shortlist --out <drafter folder or file>`."
    )


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> FrequencyTable:
    return FrequencyTable._parse(path)


def build_frequency_table(
    tokenizer, dataset, text_column: str = "text", vocab_size: int | None = None, batch_size: int = 256, source: str = ""
) -> FrequencyTable:
    """Counts the tokens of a `datasets.Dataset` (or any iterable of `{text_column: str}` rows), with a progress bar.

    `vocab_size` defaults to `len(tokenizer)`; pass the drafter's LM-head rows when they differ (padded heads).
    """
    from tqdm.auto import tqdm

    vocab_size = vocab_size if vocab_size is not None else len(tokenizer)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    batch: list[str] = []

    def flush():
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        flat = torch.tensor([i for seq in ids for i in seq], dtype=torch.long)
        if flat.numel():
            if int(flat.max()) >= vocab_size:
                raise ValueError(f"the tokenizer produced id {int(flat.max())}, outside vocab_size {vocab_size}")
            counts.add_(torch.bincount(flat, minlength=vocab_size))
        batch.clear()

    for row in tqdm(dataset, total=total, desc="counting tokens", unit="doc"):
        text = row[text_column]
        if text:
            batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return FrequencyTable.from_counts(counts, source)


VOCABTRIM_NAME = "evospec_vocabtrim.json"  # the drafter's own emissions, inside a drafter folder


@torch.no_grad()
def build_drafter_emission_table(drafter, chunks, source: str = "") -> FrequencyTable:
    """A VocabTrim-style table: how often the drafter itself emits each token on calibration text.

    Each chunk is read once (teacher-forced) and the drafter's greedy choice, the argmax of its full-vocabulary
    logits, is counted at every position: the tokens it proposes when it is on track. The first
    `FrequencyTable.top(n)` ids then make a static shortlist matched to the drafter rather than to the corpus.

    Args:
        drafter: a causal LM (the drafter, adapter merged or not).
        chunks: iterable of 1-D LongTensors of token ids (e.g. `evospec_hf.data.token_chunks(...)`'s tensors).
    """
    from tqdm.auto import tqdm

    vocab_size = drafter.get_output_embeddings().weight.shape[0]
    counts = torch.zeros(vocab_size, dtype=torch.long)
    device = drafter.device
    for ids in tqdm(list(chunks), desc="drafter emissions", unit="chunk"):
        logits = drafter(input_ids=torch.as_tensor(ids, dtype=torch.long, device=device)[None]).logits[0]
        counts += torch.bincount(logits.argmax(dim=-1).cpu(), minlength=vocab_size)
    return FrequencyTable.from_counts(counts, source)
