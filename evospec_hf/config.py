"""`EvoSpecConfig`: the one object that configures evospec_hf's speculative decoding."""

from __future__ import annotations

import json
import logging
import os
import reprlib
from dataclasses import dataclass, field, fields
from typing import ClassVar, Self

from .utils import check_bool, check_choice, check_format, check_int, check_number, check_path

logger = logging.getLogger(__name__)

CONFIG_NAME = "evospec_config.json"
FORMAT_NAME = "evospec-config"
FORMAT_VERSION = 1

# Shortlist sources that can be combined with "+" (e.g. "static+context"); "router" combines with "context" only.
SHORTLIST_SOURCES = ("static", "context", "router")
# "full" drafts over the whole vocabulary: plain assisted decoding with evospec_hf's lean draft loop.
# "evospec": router clusters + context tokens + the retrieval indexes (evospec_hf/vocab/indexes.py); not combinable.
SHORTLIST_MODES = ("full",) + SHORTLIST_SOURCES + ("evospec",)
HEAD_BACKENDS = ("auto", "torch", "triton")
DRAFT_SCHEDULES = ("constant", "heuristic", "cost")
SCREEN_HEAD_MODES = ("auto", "on", "off")
BATCH_ALIGNMENTS = ("ragged", "min")
LOSSY_ACCEPTANCE = ("adasd-js",)  # opt-in acceptance rules that change the output


class JsonConfigMixin:
    """`save_pretrained` / `from_pretrained` for a config dataclass with a `validate()` method.

    The file holds `"format"` and `"version"` next to the fields, like every other evospec_hf artefact, so that a
    file of another kind, or from a newer evospec_hf, is refused instead of being read as something it is not.
    A subclass names its file and format in `config_name`, `format_name` and `format_version`.
    """

    config_name: ClassVar[str]
    format_name: ClassVar[str]
    format_version: ClassVar[int]

    def validate(self) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The fields as JSON-ready values (paths as str)."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Writes `<config_name>` into `save_directory` and returns its path."""
        self.validate()  # never write a file that `from_pretrained` would refuse
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, self.config_name)
        data = {"format": self.format_name, "version": self.format_version, **self.to_dict()}
        tmp = f"{path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written config
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides) -> Self:
        """Reads a config from a directory holding `<config_name>` (or from that file itself); `overrides` replace
        fields of the file. A file without format and version (written before they existed) is read with a warning."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, cls.config_name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{cls.__name__} file {path!r} does not exist (expected {cls.config_name} or its folder)."
            )
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as err:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{cls.__name__} file {path!r} is corrupt: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(
                f"{cls.__name__} file {path!r} is corrupt: it holds {reprlib.repr(data)}, expected a JSON object."
            )
        data = dict(data)
        fmt, version = data.pop("format", None), data.pop("version", None)
        if fmt is None and version is None:
            logger.warning(
                "%s has no 'format' and 'version' (written by evospec_hf before they existed); reading it as %s "
                "version %d.", path, cls.format_name, cls.format_version,
            )  # fmt: skip
        else:
            check_format({"format": fmt, "version": version}, cls.format_name, cls.format_version,
                         f"an {cls.__name__} file", repr(path))  # fmt: skip
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has fields that {cls.__name__} does not know: {unknown}.")
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}.from_pretrained got overrides for fields it does not know: {unknown}.")
        data.update(overrides)
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err


def _jsonable(value):
    return os.fspath(value) if isinstance(value, os.PathLike) else value


@dataclass
class EvoSpecConfig(JsonConfigMixin):
    """Configuration of evospec_hf's drafting.

    Pass it to `model.generate(..., assistant_model=drafter, evospec_config=EvoSpecConfig(...))` after
    `import evospec_hf`. The target always verifies over the full vocabulary, so greedy output is identical to plain
    greedy `generate` and sampling keeps the target's distribution whatever these fields say; they only change speed.
    The one exception is `lossy_acceptance`, off unless named, which trades exactness for speed.
    """

    config_name: ClassVar[str] = CONFIG_NAME
    format_name: ClassVar[str] = FORMAT_NAME
    format_version: ClassVar[int] = FORMAT_VERSION

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
                "Token frequency table for 'static': a .json file built by `evospec-hf build-static-shortlist`, or a "
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
                "`evospec_clusters.safetensors` (made by `evospec-hf train-router`). None: the drafter's own folder. "
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
                "(`evospec-hf build-semantic-index`), else built in memory once per drafter. 0 disables."
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
    entropy_stop: bool = field(
        default=False,
        metadata={
            "help": (
                "AdaSD's entropy stop (lossless): a round stops drafting before a token whose draft distribution's "
                "entropy is above a threshold that the call learns from verification (halfway between the mean "
                "entropy of accepted and of rejected drafts; no value to tune). The first draft of a round is "
                "always kept. It cuts rounds within the length `draft_schedule` chose (and does not apply to "
                "copied drafts). Output is unchanged."
            )
        },
    )
    lossy_acceptance: str | None = field(
        default=None,
        metadata={
            "help": (
                "LOSSY, off by default: 'adasd-js' accepts a draft the target would not have chosen when the "
                "Jensen-Shannon distance between the drafter's and the target's distributions there is below an "
                "adaptive threshold (AdaSD; `lossy_js_scale` times the mean distance at exact acceptances). The "
                "output then differs from plain greedy output; greedy decoding only. Must be named: any other value "
                "is refused."
            )
        },
    )
    lossy_js_scale: float = field(
        default=1.0,
        metadata={"help": "With lossy_acceptance='adasd-js': multiplies the adaptive threshold (0: nothing lossy)."},
    )
    intermediate_verifier: str | None = field(
        default=None,
        metadata={
            "help": (
                "HiSpec's hierarchical verification (lossless): a folder holding an exit head for the target "
                "(`evospec-hf train-exit-head`; `evospec_exit.json`). The target's first layers and that head, over "
                "the static list's `shortlist_size` most frequent tokens (the drafter's `evospec_frequency.json` or "
                "`static_shortlist_path`), read each round's drafts first, and the round is cut where they disagree "
                "(evospec_hf/generation/hispec.py). The full target still verifies every draft that is kept. None: "
                "off."
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

    screen_head: str = field(
        default="auto",
        metadata={
            "help": (
                "Verification through an int8 screen of the target's LM head (evospec_hf/ops/screened_head.py): "
                "every row's logit approximated in int8 with a proven error bound, the rows that could be the argmax "
                "(or, when sampling with `top_k`, among the k best) computed exactly, -inf elsewhere; the argmax, "
                "and the rows a top-k filter keeps, are the full head's. Used only where that is all the call reads: "
                "greedy with no logits processor, or sampling whose first filter is `top_k`; fp32; no "
                "`output_scores`/`output_logits`, no lossy acceptance, no learning session; the full head otherwise. "
                "'auto': per row count, where it was measured faster on this machine (kept in the calibration "
                "cache). 'on': wherever it is exact. "
                "'off': never. Needs `fast_verify_head`."
            )
        },
    )

    batch_alignment: str = field(
        default="ragged",
        metadata={
            "help": (
                "A batched call (several left-padded prompts; evospec_hf/generation/batched.py): 'ragged' lets each "
                "row keep every draft it accepted, moving the rows that accepted fewer one place right per token "
                "(more left padding); 'min' keeps, in every row, only as many as the row that accepted fewest (the "
                "simple way, measured against 'ragged' by the bench's `--batch-sizes`). Both are exact."
            )
        },
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks every field; raises a ValueError naming the field and its value.

        Runs at construction, and again when `generate` starts, so that a field changed after construction
        (`config.num_draft_tokens = 0`) is refused with the same message instead of failing deep inside drafting.
        """
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
        if "router" in parts and "static" in parts:
            raise ValueError(f"`shortlist`: 'router' combines with 'context' only, got {self.shortlist!r}.")
        for name in ("shortlist_size", "num_draft_tokens", "max_draft_tokens", "ngram_order", "lookup_max_ngram",
                     "lookup_min_ngram"):  # fmt: skip
            check_int(name, getattr(self, name), minimum=1)
        for name in ("context_slots", "semantic_neighbors", "ngram_continuations", "lookup_tokens"):
            check_int(name, getattr(self, name), minimum=0)
        for name in ("static_shortlist_path", "router_path", "intermediate_verifier"):
            check_path(name, getattr(self, name))
        check_choice("draft_schedule", self.draft_schedule, DRAFT_SCHEDULES)
        check_choice("head_backend", self.head_backend, HEAD_BACKENDS)
        check_choice("screen_head", self.screen_head, SCREEN_HEAD_MODES)
        check_choice("batch_alignment", self.batch_alignment, BATCH_ALIGNMENTS)
        check_number("confidence_threshold", self.confidence_threshold, above=0, below=1, optional=True)
        check_bool("fast_verify_head", self.fast_verify_head)
        check_bool("entropy_stop", self.entropy_stop)
        if self.lossy_acceptance is not None and self.lossy_acceptance not in LOSSY_ACCEPTANCE:
            raise ValueError(
                f"`lossy_acceptance` changes the output, so it is on only when named: None (exact, the default) or "
                f"one of {LOSSY_ACCEPTANCE}, got {self.lossy_acceptance!r}."
            )
        check_number("lossy_js_scale", self.lossy_js_scale, minimum=0)

        # relations between fields
        if self.lookup_min_ngram > self.lookup_max_ngram:
            raise ValueError(
                f"`lookup_min_ngram` ({self.lookup_min_ngram}) must not exceed `lookup_max_ngram` ({self.lookup_max_ngram})."
            )
        sources = self.shortlist_sources
        if "context" in sources and len(sources) > 1 and self.context_slots >= self.shortlist_size:
            kept = "the router's clusters keep" if "router" in sources else "the static list keeps"
            raise ValueError(
                f"`context_slots` ({self.context_slots}) must be smaller than `shortlist_size` "
                f"({self.shortlist_size}) so that {kept} some slots."
            )
        if self.num_draft_tokens > self.max_draft_tokens:
            raise ValueError(
                f"`num_draft_tokens` ({self.num_draft_tokens}) must not exceed `max_draft_tokens` ({self.max_draft_tokens})."
            )

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
