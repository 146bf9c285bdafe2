"""`EvoSpecConfig`: the one object that configures evospec_hf's speculative decoding."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

CONFIG_NAME = "evospec_config.json"

# Shortlist sources that can be combined with "+" (e.g. "static+context"); "router" combines with "context" only.
SHORTLIST_SOURCES = ("static", "context", "router")
# "full" drafts over the whole vocabulary: plain assisted decoding with evospec_hf's lean draft loop.
# "evospec": router clusters + context tokens + the retrieval indexes (evospec_hf/vocab/indexes.py); not combinable.
SHORTLIST_MODES = ("full",) + SHORTLIST_SOURCES + ("evospec",)
HEAD_BACKENDS = ("auto", "torch", "triton")
DRAFT_SCHEDULES = ("constant", "heuristic", "cost")


@dataclass
class EvoSpecConfig:
    """Configuration of evospec_hf's drafting.

    Pass it to `model.generate(..., assistant_model=drafter, evospec_config=EvoSpecConfig(...))` after
    `import evospec_hf`. The target always verifies over the full vocabulary, so greedy output is identical to plain
    greedy `generate` and sampling keeps the target's distribution whatever these fields say; they only change speed.
    """

    shortlist: str = field(
        default="full",
        metadata={
            "help": (
                "Which tokens the drafter may propose. 'full': the whole vocabulary (no shortlist). 'static': the "
                "`shortlist_size` most frequent tokens of a corpus (FR-Spec), read from `static_shortlist_path`. "
                "'context': tokens already seen in the prompt and the generated text. 'router': at every draft "
                "step, the token clusters a learned router picks from the drafter's hidden state (DynaSpec). "
                "Sources combine with '+': 'static+context', 'router+context'. 'evospec': 'router+context' plus "
                "retrieval: the semantic neighbours of new context tokens and the n-gram continuations of the last "
                "ones also enter the context slots (see `semantic_neighbors`, `ngram_order`, `ngram_continuations`). "
                "EOS and pad tokens are always in."
            )
        },
    )
    shortlist_size: int = field(
        default=16384,
        metadata={"help": "Total number of token ids in the shortlist (all sources and special tokens together)."},
    )
    context_slots: int = field(
        default=2048,
        metadata={
            "help": (
                "With 'static+context': how many of the `shortlist_size` slots are kept for context tokens that the "
                "static list lacks (least recently seen is evicted first). With 'context' alone all slots are "
                "context slots and this field is ignored."
            )
        },
    )
    static_shortlist_path: str | None = field(
        default=None,
        metadata={
            "help": (
                "Token frequency table for 'static': a .json file built by `scripts/build_static_shortlist.py`, or a "
                "folder holding `evospec_frequency.json`. None: use the `evospec_frequency.json` saved in the "
                "drafter's own folder (as evospec_hf drafter checkpoints ship it)."
            )
        },
    )
    router_path: str | None = field(
        default=None,
        metadata={
            "help": (
                "For 'router': a folder holding `evospec_router.json`, `evospec_router.safetensors` and "
                "`evospec_clusters.safetensors` (made by `scripts/train_router.py`). None: the drafter's own folder. "
                "The router's clusters get the slots left after special tokens and `context_slots`."
            )
        },
    )
    semantic_neighbors: int = field(
        default=4,
        metadata={
            "help": (
                "With 'evospec': how many nearest tokens by output embedding (cosine of LM-head rows) each new context "
                "token brings into the context slots. Read from `evospec_semantic.safetensors` in the router's folder "
                "(`scripts/build_semantic_index.py`), else built in memory once per drafter. 0 disables."
            )
        },
    )
    ngram_order: int = field(
        default=2,
        metadata={
            "help": (
                "With 'evospec': n of the statistical index's n-grams; its continuations follow the last "
                "`ngram_order - 1` tokens (backing off to shorter histories). With an `EvoSpecSession` its counts "
                "persist across `generate` calls."
            )
        },
    )
    ngram_continuations: int = field(
        default=8,
        metadata={
            "help": (
                "With 'evospec': how many of the most frequent continuations of the last tokens enter the context "
                "slots per round. 0 disables the statistical index."
            )
        },
    )
    num_draft_tokens: int = field(
        default=6,
        metadata={"help": "Tokens drafted per round (the starting value under the 'heuristic' and 'cost' schedules)."},
    )
    draft_schedule: str = field(
        default="cost",
        metadata={
            "help": (
                "'constant': always draft `num_draft_tokens`. 'heuristic' (as transformers' assisted decoding): "
                "+2 after a round where every draft was accepted, -1 otherwise, never below 1 nor above "
                "`max_draft_tokens`; reset at every `generate` call. 'cost': each round's length (up to "
                "`max_draft_tokens`, or `lookup_tokens` for copied drafts) maximises the expected tokens per "
                "second, from the acceptance measured in this call and the target's verification time per length "
                "measured on this machine (evospec_hf/generation/schedule.py). Its lengths depend on timings, so "
                "with `do_sample=True` a seeded run is reproducible only under 'heuristic' or 'constant' (every "
                "schedule keeps the target's distribution)."
            )
        },
    )
    max_draft_tokens: int = field(
        default=16,
        metadata={"help": "Upper bound on the tokens the drafter drafts per round under 'heuristic' and 'cost'."},
    )
    confidence_threshold: float | None = field(
        default=None,
        metadata={
            "help": (
                "If set, a round stops drafting early once the drafter's probability of its own next token "
                "(over the shortlist) falls below this value. None drafts the full round."
            )
        },
    )
    lookup_tokens: int = field(
        default=10,
        metadata={
            "help": (
                "Context lookup (prompt-lookup decoding inside evospec_hf): if > 0, each round first looks for the "
                "sequence's last tokens earlier in the sequence and, when they occur, drafts up to this many of the "
                "tokens that followed them instead of running the drafter (evospec_hf/generation/lookup.py). Under "
                "the 'cost' and 'heuristic' schedules this is the longest copy, and the length adapts apart from "
                "the drafter's; under 'constant' every copy is this long (or shorter where the text ends). 0 "
                "disables it."
            )
        },
    )
    lookup_max_ngram: int = field(
        default=3,
        metadata={"help": "Context lookup: the longest suffix of the sequence that is matched (longest first)."},
    )
    lookup_min_ngram: int = field(
        default=1,
        metadata={"help": "Context lookup: the shortest suffix that may produce a draft; shorter matches draft nothing."},
    )
    head_backend: str = field(
        default="auto",
        metadata={
            "help": (
                "How the drafter's shortlist LM head is computed. 'auto': the Triton kernel when the drafter is on a "
                "CUDA device and Triton is installed, else the torch path. 'torch' or 'triton' force one."
            )
        },
    )

    fast_verify_head: bool = field(
        default=True,
        metadata={
            "help": (
                "On CPU, compute the target's LM head for the k + 1 verified positions by whichever of "
                "`F.linear(H, W)` and `W @ H.T` is faster for that many rows on this machine: CPU BLAS can run a "
                "few rows several times slower than one, in either order. Each row count's first calls time both "
                "(evospec_hf/ops/verify_head.py). Same values up to float rounding. False leaves the target as it is."
            )
        },
    )

    def __post_init__(self):
        parts = self.shortlist.split("+") if isinstance(self.shortlist, str) else None
        if not parts or any(p not in SHORTLIST_MODES for p in parts) or len(set(parts)) != len(parts):
            raise ValueError(
                f"`shortlist` must be one of {SHORTLIST_MODES} or a '+'-union of {SHORTLIST_SOURCES}, "
                f"got {self.shortlist!r}."
            )
        if "full" in parts and len(parts) > 1:
            raise ValueError(f"`shortlist`='full' already holds every token and cannot be combined, got {self.shortlist!r}.")
        if "evospec" in parts and len(parts) > 1:
            raise ValueError(
                f"`shortlist`='evospec' already is router + context + retrieval and cannot be combined, got {self.shortlist!r}."
            )
        parts = list(self.shortlist_sources)
        for name in ("shortlist_size", "num_draft_tokens", "max_draft_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        for name in ("context_slots", "semantic_neighbors", "ngram_continuations", "lookup_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
        if isinstance(self.ngram_order, bool) or not isinstance(self.ngram_order, int) or self.ngram_order < 1:
            raise ValueError(f"`ngram_order` must be a positive integer, got {self.ngram_order!r}.")
        for name in ("lookup_max_ngram", "lookup_min_ngram"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
        if self.lookup_min_ngram > self.lookup_max_ngram:
            raise ValueError(
                f"`lookup_min_ngram` ({self.lookup_min_ngram}) must not exceed `lookup_max_ngram` ({self.lookup_max_ngram})."
            )
        if "router" in parts and "static" in parts:
            raise ValueError(f"`shortlist`: 'router' combines with 'context' only, got {self.shortlist!r}.")
        if "router" in parts and "context" in parts and self.context_slots >= self.shortlist_size:
            raise ValueError(
                f"`context_slots` ({self.context_slots}) must be smaller than `shortlist_size` "
                f"({self.shortlist_size}) so that the router's clusters keep some slots."
            )
        if "static" in parts and "context" in parts and self.context_slots >= self.shortlist_size:
            raise ValueError(
                f"`context_slots` ({self.context_slots}) must be smaller than `shortlist_size` "
                f"({self.shortlist_size}) so that the static list keeps some slots."
            )
        if self.num_draft_tokens > self.max_draft_tokens:
            raise ValueError(
                f"`num_draft_tokens` ({self.num_draft_tokens}) must not exceed `max_draft_tokens` ({self.max_draft_tokens})."
            )
        if self.draft_schedule not in DRAFT_SCHEDULES:
            raise ValueError(f"`draft_schedule` must be one of {DRAFT_SCHEDULES}, got {self.draft_schedule!r}.")
        if self.confidence_threshold is not None and not (0.0 < self.confidence_threshold < 1.0):
            raise ValueError(f"`confidence_threshold` must be None or in (0, 1), got {self.confidence_threshold!r}.")
        if not isinstance(self.fast_verify_head, bool):
            raise ValueError(f"`fast_verify_head` must be True or False, got {self.fast_verify_head!r}.")
        if self.head_backend not in HEAD_BACKENDS:
            raise ValueError(f"`head_backend` must be one of {HEAD_BACKENDS}, got {self.head_backend!r}.")

    @property
    def shortlist_sources(self) -> tuple[str, ...]:
        """The sources named in `shortlist` (empty for 'full'; 'evospec' runs the router and context sources)."""
        if self.shortlist == "evospec":
            return ("router", "context")
        return () if self.shortlist == "full" else tuple(self.shortlist.split("+"))

    @property
    def uses_retrieval(self) -> bool:
        """Whether the retrieval indexes (`evospec_hf/vocab/indexes.py`) feed the context slots ('evospec')."""
        return self.shortlist == "evospec"

    def to_dict(self) -> dict:
        return asdict(self)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Writes `evospec_config.json` into `save_directory` and returns its path."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> "EvoSpecConfig":
        """Reads a config from a directory holding `evospec_config.json` (or from that file itself)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, CONFIG_NAME)
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has fields that EvoSpecConfig does not know: {unknown}.")
        data.update(overrides)
        return cls(**data)
