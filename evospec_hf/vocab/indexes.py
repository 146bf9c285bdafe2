"""Retrieval indexes for `shortlist="evospec"`: long-tail tokens that the router and the context slots miss.

* `SemanticIndex`: each token's `k` nearest tokens by output embedding (cosine similarity of the L2-normalised
  LM-head rows, the token itself excluded), as one `(vocab_size, k)` int32 table built once with faiss. A round's
  query is the tokens that just entered the context; looking them up is a gather on the table.
* `NGramIndex`: counts of the context's n-grams, keyed by the previous `order - 1` tokens. A round's query is the
  last tokens of the sequence; the answer is the tokens that followed them before, most frequent first. With an
  `EvoSpecSession` the counts outlive one `generate` call.
* `ContextRetrieval`: what one drafting round asks of both (used by the candidate generator and by
  `benchmarks/shortlist_recall.py`, so the evaluation runs the generator's own code).

The retrieved tokens go into the shortlist's context slots *before* the round's real context tokens, so real
context tokens are the most recently seen and are evicted last.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections import Counter

import numpy as np
import torch

from ..utils import check_format, check_int

SEMANTIC_NAME = "evospec_semantic.safetensors"
SEMANTIC_FORMAT = "evospec-semantic-index"
SEMANTIC_VERSION = "1"
# up to this many tokens the neighbours are exact (faiss IndexFlatIP); above, an IVF index (approximate)
EXACT_SEARCH_MAX_VOCAB = 32768

logger = logging.getLogger(__name__)


class SemanticIndex:
    """Token -> its `k` nearest tokens by output embedding.

    Args:
        neighbors: `(vocab_size, k)` int32 table; row `t` lists `t`'s neighbours, nearest first. A token with fewer
            than `k` neighbours found repeats itself in the remaining columns (harmless: it is in the context).
    """

    def __init__(self, neighbors: torch.Tensor):
        if neighbors.dim() != 2:
            raise ValueError(f"neighbors must be a (vocab_size, k) table, got shape {tuple(neighbors.shape)}")
        self.neighbors = neighbors.to(torch.int32).contiguous()

    @property
    def vocab_size(self) -> int:
        return self.neighbors.shape[0]

    @property
    def k(self) -> int:
        return self.neighbors.shape[1]

    def lookup(self, token_ids: torch.Tensor, k: int | None = None) -> torch.Tensor:
        """Distinct neighbours (LongTensor, on `token_ids`' device) of the given tokens, using the first `k` columns.

        Cost: a gather of `len(token_ids) * k` entries; nothing vocabulary sized.
        """
        k = self.k if k is None else min(k, self.k)
        if k <= 0 or token_ids.numel() == 0:
            return torch.empty(0, dtype=torch.long, device=token_ids.device)
        found = self.neighbors[token_ids.flatten().cpu().long(), :k].flatten().long()
        return torch.unique(found).to(token_ids.device)

    @classmethod
    def build(
        cls,
        head_weight: torch.Tensor,
        k: int = 4,
        nlist: int | None = None,
        nprobe: int = 8,
        train_points_per_list: int = 64,
        batch_size: int = 8192,
        seed: int = 0,
        progress: bool = True,
    ) -> "SemanticIndex":
        """Builds the table from an LM head `(vocab_size, hidden_size)` with faiss.

        Vocabularies up to `EXACT_SEARCH_MAX_VOCAB` tokens are searched exactly (`IndexFlatIP`). Larger ones use an
        IVF index: `nlist` lists (default `4 * sqrt(vocab_size)`) from faiss k-means on a sample of
        `train_points_per_list * nlist` rows, `nprobe` lists searched per query.
        """
        import faiss
        from tqdm.auto import tqdm

        vectors = head_weight.detach().float().cpu().numpy()
        vectors = np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12))
        vocab_size, dim = vectors.shape
        if not 1 <= k < vocab_size:
            raise ValueError(f"k must be in [1, {vocab_size - 1}], got {k}")
        if vocab_size <= EXACT_SEARCH_MAX_VOCAB:
            index = faiss.IndexFlatIP(dim)
        else:
            nlist = nlist or int(4 * math.sqrt(vocab_size))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = rng.choice(vocab_size, size=min(vocab_size, train_points_per_list * nlist), replace=False)
            index.cp.seed = seed
            index.train(vectors[np.sort(sample)])
            index.nprobe = nprobe
        index.add(vectors)

        table = np.empty((vocab_size, k), dtype=np.int32)
        for start in tqdm(range(0, vocab_size, batch_size), desc="semantic index", unit="batch", disable=not progress):
            ids = np.arange(start, min(start + batch_size, vocab_size))
            _, found = index.search(vectors[ids], k + 1)
            found = np.where(found < 0, ids[:, None], found)  # fewer than k + 1 found: the token stands in
            # drop the token itself (wherever it ranks; ties can put it second), keep the first k others
            order = np.argsort(found == ids[:, None], axis=1, kind="stable")[:, :k]
            table[ids] = np.take_along_axis(found, order, axis=1)
        return cls(torch.from_numpy(table))

    def save(self, folder: str | os.PathLike) -> str:
        """Writes `<folder>/evospec_semantic.safetensors` and returns its path."""
        from safetensors.torch import save_file

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, SEMANTIC_NAME)
        metadata = {"format": SEMANTIC_FORMAT, "version": SEMANTIC_VERSION}
        metadata |= {"k": str(self.k), "vocab_size": str(self.vocab_size)}
        save_file({"neighbors": self.neighbors}, f"{path}.tmp", metadata=metadata)
        os.replace(f"{path}.tmp", path)  # atomic: a crash never leaves a half-written table
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike, vocab_size: int | None = None) -> "SemanticIndex":
        """Reads `<folder>/evospec_semantic.safetensors`; with `vocab_size`, checks it was made for that vocabulary."""
        from safetensors import safe_open

        path = os.path.join(folder, SEMANTIC_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing; build it with `evospec-hf build-semantic-index --checkpoint <folder>`."
            )
        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
                neighbors = f.get_tensor("neighbors")
            version = int(metadata["version"]) if str(metadata.get("version", "")).isdigit() else None
            check_format({**metadata, "version": version}, SEMANTIC_FORMAT, int(SEMANTIC_VERSION), "a semantic index",
                         "the file")  # fmt: skip
            if neighbors.dim() != 2 or neighbors.dtype != torch.int32:
                raise ValueError(f"'neighbors' is {neighbors.dtype} {tuple(neighbors.shape)}, not a 2-D int32 table")
            if (int(metadata["vocab_size"]), int(metadata["k"])) != tuple(neighbors.shape):
                raise ValueError(
                    f"metadata says {metadata['vocab_size']} x {metadata['k']}, the table is {tuple(neighbors.shape)}"
                )
            if neighbors.numel() and (int(neighbors.min()) < 0 or int(neighbors.max()) >= neighbors.shape[0]):
                raise ValueError("token ids fall outside the table's vocabulary")
        except Exception as err:
            raise ValueError(f"{path} is corrupt: {err}") from err
        if vocab_size is not None and neighbors.shape[0] != vocab_size:
            raise ValueError(
                f"{path} was built for a vocabulary of {neighbors.shape[0]} tokens, but the drafter's LM head has "
                f"{vocab_size}; rebuild it with `evospec-hf build-semantic-index`."
            )
        return cls(neighbors)


class NGramIndex:
    """Counts of the context's tokens and of their continuations, for n-grams up to `order`.

    `order=2`: after token `a`, which tokens followed `a` so far, and how often. `order=1` counts tokens alone (the
    continuation of anything is the most frequent context token). When the longest history has fewer continuations
    than asked for, shorter histories fill the rest, down to the most frequent context tokens.
    """

    def __init__(self, order: int = 2):
        check_int("order", order)
        self.order = order
        self.counts: dict[tuple[int, ...], Counter] = {}

    def reset(self) -> None:
        self.counts.clear()

    def update(self, new_tokens, previous=()) -> None:
        """Counts the n-grams ending in `new_tokens`; `previous` is the text just before them (its last
        `order - 1` tokens are used). Cost: `len(new_tokens) * order` counter updates."""
        new = torch.as_tensor(new_tokens).flatten().tolist()
        if not new:
            return
        tail = torch.as_tensor(previous).flatten().tolist()[-(self.order - 1) :] if self.order > 1 else []
        text = tail + new
        for i in range(len(tail), len(text)):
            for n in range(min(self.order - 1, i), -1, -1):
                self.counts.setdefault(tuple(text[i - n : i]), Counter())[text[i]] += 1

    def continuations(self, last_tokens, limit: int) -> torch.Tensor:
        """Up to `limit` tokens that followed `last_tokens`' ending before, most frequent first (LongTensor).

        Cost: a top-`limit` over the distinct tokens counted under each history visited (the unigram back-off visits
        every distinct context token: measured 1.3 ms with 5,000 of them on a busy 2-core CPU, 0.04 ms when the
        bigrams alone fill `limit`)."""
        if limit <= 0:
            return torch.empty(0, dtype=torch.long)
        last = torch.as_tensor(last_tokens).flatten().tolist()[-(self.order - 1) :] if self.order > 1 else []
        out: list[int] = []
        for n in range(len(last), -1, -1):  # longest history first, then back off
            counter = self.counts.get(tuple(last[len(last) - n :]))
            if counter:
                out += [t for t, _ in counter.most_common(limit + len(out)) if t not in out][: limit - len(out)]
            if len(out) >= limit:
                break
        return torch.tensor(out, dtype=torch.long)


class ContextRetrieval:
    """One drafting round's retrieved tokens for `shortlist="evospec"`.

    Args:
        semantic: a `SemanticIndex`, or None; `semantic_neighbors` neighbours per new context token.
        ngram: an `NGramIndex`, or None; `ngram_continuations` continuations of the sequence's last tokens.
    """

    def __init__(
        self,
        semantic: SemanticIndex | None,
        semantic_neighbors: int,
        ngram: NGramIndex | None,
        ngram_continuations: int,
    ):
        self.semantic = semantic if semantic_neighbors > 0 else None
        self.semantic_neighbors = semantic_neighbors
        self.ngram = ngram if ngram_continuations > 0 else None
        self.ngram_continuations = ngram_continuations

    def retrieve(self, sequence: torch.Tensor, num_observed: int) -> torch.Tensor:
        """Updates the n-gram counts with `sequence[num_observed:]` (1-D) and returns the tokens to observe before
        those: semantic neighbours of the new tokens, then n-gram continuations of the sequence's end."""
        new = sequence[num_observed:]
        found = []
        if self.semantic is not None:
            found.append(self.semantic.lookup(new, self.semantic_neighbors))
        if self.ngram is not None:
            order = self.ngram.order
            self.ngram.update(new, sequence[max(0, num_observed - order + 1) : num_observed])
            last = sequence[-(order - 1) :] if order > 1 else sequence[:0]
            found.append(self.ngram.continuations(last, self.ngram_continuations))
        if not found:
            return sequence[:0]
        return torch.cat([f.to(sequence.device) for f in found])


# per drafter LM-head module: a table built in memory (when the router folder has none), reused across calls. The
# lock keeps two threads starting on one drafter from building it twice (minutes for a 262k vocabulary).
_SEMANTIC_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()
_SEMANTIC_LOCK = threading.Lock()


def load_semantic_index(folder: str, lm_head: torch.nn.Module, k: int) -> SemanticIndex:
    """The semantic table for `shortlist="evospec"`: `<folder>/evospec_semantic.safetensors` when it exists and has
    at least `k` columns, else one built in memory from the LM head (once per head module and weights)."""
    with _SEMANTIC_LOCK:
        return _load_semantic_index(folder, lm_head, k)


def _load_semantic_index(folder: str, lm_head: torch.nn.Module, k: int) -> SemanticIndex:
    weight = lm_head.weight.detach()
    path = os.path.join(folder, SEMANTIC_NAME) if folder else ""
    if path and os.path.isfile(path):
        key = ("file", os.path.abspath(path), os.stat(path).st_mtime_ns, weight.shape[0])
    else:
        key = ("built", k, weight._version, weight.shape)
    cached_key, index = _SEMANTIC_CACHE.get(lm_head, (None, None))
    if cached_key == key:
        return index
    if key[0] == "file":
        index = SemanticIndex.load(folder, vocab_size=weight.shape[0])
        if index.k >= k:
            _SEMANTIC_CACHE[lm_head] = (key, index)
            return index
        logger.warning(
            "%s has %d neighbours per token, fewer than semantic_neighbors=%d: building a table.", path, index.k, k
        )
        key = ("built", k, weight._version, weight.shape)
    start = time.perf_counter()
    index = SemanticIndex.build(weight, k=k, progress=weight.shape[0] > EXACT_SEARCH_MAX_VOCAB)
    logger.warning(
        "shortlist='evospec': built the semantic index of %d tokens in memory in %.1f s (%s has no %s). Ship it with "
        "`evospec-hf build-semantic-index --checkpoint <drafter folder> --neighbors %d`.",
        weight.shape[0], time.perf_counter() - start, folder or "the drafter has no folder and", SEMANTIC_NAME, k,
    )  # fmt: skip
    _SEMANTIC_CACHE[lm_head] = (key, index)
    return index


def context_retrieval(config, drafter, lm_head: torch.nn.Module, ngram: NGramIndex | None = None):
    """The `ContextRetrieval` an `EvoSpecConfig` asks for (None unless `shortlist="evospec"`).

    The semantic table comes from the router's folder (`router_path`, else the drafter's own folder), see
    `load_semantic_index`. `ngram`: an index to keep using (an `EvoSpecSession`'s); None starts an empty one.
    """
    if not config.uses_retrieval:
        return None
    semantic = None
    if config.semantic_neighbors:
        from .router import resolve_router_folder

        folder = resolve_router_folder(config.router_path, drafter)
        semantic = load_semantic_index(folder, lm_head, config.semantic_neighbors)
    ngram = ngram if ngram is not None else NGramIndex(config.ngram_order)
    return ContextRetrieval(semantic, config.semantic_neighbors, ngram, config.ngram_continuations)
