"""The decoding methods the benchmark compares, each a way to call `target.generate` greedily.

Names (`--methods`):

- `target`: plain greedy `generate`, the reference every lossless method must reproduce.
- `target+screen`: plain greedy with the target's LM head screened in int8 (`evospec_hf.screened_greedy`, no
  drafter): the screen's share of the speed-up on its own. Every evospec_hf method also verifies through the screen
  (`EvoSpecConfig.screen_head`, `--screen-head`; `off` shows each method without it).
- `hf-assisted`: transformers' own assisted generation with the same drafter over the full vocabulary (its
  defaults: 20 draft tokens with its heuristic schedule, confidence threshold 0.4).
- `prompt-lookup`: transformers' prompt lookup decoding (10 tokens, n-grams up to 2), no drafter.
- `full-vocab`: evospec_hf's draft loop with no shortlist (the same drafter's full-vocabulary tau).
- `fr-spec-<N>k`: the static FR-Spec list of the N*1024 most frequent corpus tokens (`shortlist="static"`).
- `vocabtrim-<N>k`: a static list of the N*1024 tokens the drafter itself emits most on calibration text
  (`evospec_vocabtrim.json` in the drafter folder, from `evospec-hf build-vocabtrim-shortlist`).
- `router-<N>k`: the DynaSpec cluster router alone (`shortlist="router"`).
- `evospec-<N>k`: router, context tokens and the retrieval indexes (`shortlist="evospec"`).
- `evospec-online-<N>k`: evospec with a fresh `EvoSpecSession` per generation that learns online.

A `feature:` prefix runs a method with the feature drafter (`--feature-drafter`, EAGLE-style) instead of the token
drafter, e.g. `feature:full-vocab` or `feature:evospec-16k+lookup`.

The size suffix is optional (16k by default): `fr-spec` is `fr-spec-16k`. Any evospec_hf method (`full-vocab` and
the shortlist families) takes a `+lookup` suffix, e.g. `evospec-16k+lookup`: it drafts by context lookup when the
sequence's last tokens occurred before, and with its drafter otherwise (`EvoSpecConfig.lookup_tokens`). Every
evospec_hf method runs `EvoSpecConfig`'s default draft schedule unless `draft_schedule` says otherwise. A `+adasd`
suffix adds AdaSD's entropy stop (`EvoSpecConfig.entropy_stop`, lossless), e.g. `feature:evospec-16k+adasd+lookup`;
`+adasd-lossy` adds both halves of AdaSD, the entropy stop and the LOSSY acceptance by Jensen-Shannon distance
(`lossy_acceptance="adasd-js"`): its output is not checked against greedy output but measured against it.
`+hispec` adds HiSpec's intermediate verifier (`EvoSpecConfig.intermediate_verifier`, the bench's `--exit-head`).
`+no-screen` verifies with the target's full head (`screen_head="off"`): the drafter's share without the screen.
`+align-min` keeps, in a batched call, only as many drafts per row as the row that accepted fewest
(`batch_alignment="min"`), against the default where each row keeps its own (`--batch-sizes`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..config import EvoSpecConfig
from ..evolve import EvoSpecSession, OnlineAlignmentConfig
from ..generation.integration import screened_greedy
from ..utils import drafter_folder
from ..vocab.frequency import VOCABTRIM_NAME

DEFAULT_METHODS = (
    "target", "target+screen", "hf-assisted", "prompt-lookup", "full-vocab", "fr-spec-8k", "fr-spec-16k", "fr-spec-32k",
    "vocabtrim-16k", "router-16k", "evospec-16k", "evospec-online-16k", "fr-spec-16k+lookup", "evospec-16k+lookup",
    "evospec-16k+adasd", "evospec-16k+adasd-lossy", "evospec-16k+adasd+lookup",
)  # fmt: skip
# added to the default comparison when the bench has what they need: an exit head (--exit-head), a feature drafter
DEFAULT_HISPEC_METHODS = ("evospec-16k+hispec",)
DEFAULT_FEATURE_METHODS = ("feature:evospec-16k", "feature:evospec-16k+adasd+lookup", "feature:evospec-16k+adasd-lossy")
SHORTLISTS = {  # method family -> EvoSpecConfig.shortlist
    "fr-spec": "static", "vocabtrim": "static", "router": "router", "evospec": "evospec", "evospec-online": "evospec",
}  # fmt: skip
LOOKUP_SUFFIX = "+lookup"
ADASD_SUFFIX = "+adasd"
ADASD_LOSSY_SUFFIX = "+adasd-lossy"
HISPEC_SUFFIX = "+hispec"
NO_SCREEN_SUFFIX = "+no-screen"
ALIGN_MIN_SUFFIX = "+align-min"
SCREENED_TARGET = "target+screen"
SUFFIXES = {  # method suffix -> EvoSpecConfig fields on top of the method's (lookup's length and the exit head are
    # build_methods' own)
    LOOKUP_SUFFIX: {}, ADASD_SUFFIX: {"entropy_stop": True}, HISPEC_SUFFIX: {},
    ADASD_LOSSY_SUFFIX: {"entropy_stop": True, "lossy_acceptance": "adasd-js"},
    NO_SCREEN_SUFFIX: {"screen_head": "off"}, ALIGN_MIN_SUFFIX: {"batch_alignment": "min"},
}  # fmt: skip
FEATURE_PREFIX = "feature:"
_SIZED = re.compile(r"^(fr-spec|vocabtrim|router|evospec-online|evospec)(?:-(\d+)k)?$")

# the online-alignment setting measured cheapest on this CPU (docs/benchmarks/online-learning.md): last layer, every 8 rounds;
# a fresh session per generation learns only inside its one call
ONLINE_DEFAULTS = OnlineAlignmentConfig(trainable_layers=1, update_every=8, learn="in-loop", governor=False)


@dataclass
class Method:
    """One way to generate.

    Attributes:
        name: the method's name in tables and plots.
        generate_kwargs: returns the keyword arguments `target.generate` gets on top of the prompt, greedy and
            `max_new_tokens`; called once per generation (so a session is fresh each time).
        lossless: greedy output must equal plain greedy output (False: `+adasd-lossy`, whose agreement with greedy
            output is reported instead).
        drafts: whether it reports `DraftStats` (evospec_hf's own generator).
    """

    name: str
    generate_kwargs: Callable[[], dict]
    lossless: bool = True
    drafts: bool = False


def build_methods(
    names, drafter=None, adapting_drafter=None, num_draft_tokens: int | None = None,
    online: OnlineAlignmentConfig | None = None, fast_verify_head: bool = True,
    lookup_tokens: int = EvoSpecConfig.lookup_tokens, draft_schedule: str = EvoSpecConfig.draft_schedule,
    feature_drafter=None, feature_adapting_drafter=None, exit_head: str | None = None,
    screen_head: str = EvoSpecConfig.screen_head,
) -> list[Method]:  # fmt: skip
    """The methods called `names`.

    Args:
        drafter: the drafter for `hf-assisted` and every shortlist method (an `EvoSpecDrafter`, adapter merged).
        adapting_drafter: the drafter for `evospec-online`, with its LoRA unmerged (`merge_adapter=False`); the
            session swaps its adapter in and out, so `drafter` is never touched.
        num_draft_tokens: tokens drafted per round by evospec_hf's methods (None: `EvoSpecConfig`'s default).
        online: the online alignment of `evospec-online` (default `ONLINE_DEFAULTS`).
        fast_verify_head: `EvoSpecConfig.fast_verify_head` for evospec_hf's methods (False: the target's head runs
            as transformers runs it, as in `hf-assisted` and `prompt-lookup`).
        lookup_tokens: `EvoSpecConfig.lookup_tokens` of the `+lookup` methods (the others run without lookup).
        draft_schedule: `EvoSpecConfig.draft_schedule` of evospec_hf's methods.
        feature_drafter, feature_adapting_drafter: the same two for the `feature:` methods (a feature drafter).
        exit_head: the exit head folder of the `+hispec` methods (`EvoSpecConfig.intermediate_verifier`).
        screen_head: `EvoSpecConfig.screen_head` of evospec_hf's methods and of `target+screen`.
    """
    methods, seen, online = [], set(), online or ONLINE_DEFAULTS
    for name in names:
        options = {"fast_verify_head": fast_verify_head, "draft_schedule": draft_schedule, "screen_head": screen_head}
        if name.endswith(HISPEC_SUFFIX) or f"{HISPEC_SUFFIX}+" in name:
            if exit_head is None:
                raise ValueError(f"method {name!r} needs an exit head (--exit-head, from evospec-hf train-exit-head)")
            options["intermediate_verifier"] = exit_head
        if num_draft_tokens is not None:
            options["num_draft_tokens"] = num_draft_tokens
        if name == SCREENED_TARGET:
            config = EvoSpecConfig(fast_verify_head=fast_verify_head, screen_head=screen_head)
            method = Method(name, lambda: {"custom_generate": screened_greedy, "evospec_config": config}, drafts=True)
        elif name.startswith(FEATURE_PREFIX):
            if feature_drafter is None:
                raise ValueError(f"method {name!r} needs a feature drafter (--feature-drafter)")
            method = _build(name.removeprefix(FEATURE_PREFIX), feature_drafter, feature_adapting_drafter, options,
                            online, lookup_tokens)  # fmt: skip
            if method.name == "hf-assisted":
                raise ValueError("transformers' assisted decoding cannot draft with a feature drafter")
            method.name = FEATURE_PREFIX + method.name
        else:
            method = _build(name, drafter, adapting_drafter, options, online, lookup_tokens)
        if method.name in seen:
            raise ValueError(f"method {method.name!r} is listed twice")
        seen.add(method.name)
        methods.append(method)
    return methods


def _build(name, drafter, adapting_drafter, options, online, lookup_tokens) -> Method:
    base, suffixes = name, []
    while True:  # the suffixes, in any order: "evospec-16k+adasd+lookup"
        suffix = next((s for s in SUFFIXES if base.endswith(s)), None)
        if suffix is None:
            break
        if suffix in suffixes:
            raise ValueError(f"method {name!r} names {suffix!r} twice")
        base, suffixes = base.removesuffix(suffix), [suffix, *suffixes]
    if suffixes and base in ("target", "prompt-lookup", "hf-assisted"):
        raise ValueError(f"{' '.join(suffixes)} applies to evospec_hf's methods only, not to {base!r}")
    lookup = LOOKUP_SUFFIX in suffixes
    if lookup and lookup_tokens <= 0:
        raise ValueError(f"method {name!r} needs lookup_tokens > 0, got {lookup_tokens}")
    options = {**options, "lookup_tokens": lookup_tokens if lookup else 0}
    for suffix in suffixes:
        options.update(SUFFIXES[suffix])
    method = _build_base(base, drafter, adapting_drafter, options, online)
    method.name += "".join(suffixes)
    method.lossless = options.get("lossy_acceptance") is None
    return method


def _build_base(name, drafter, adapting_drafter, draft, online) -> Method:
    """`draft`: the `EvoSpecConfig` fields every evospec_hf method gets (head, schedule, lookup)."""
    if name == "target":
        return Method(name, dict)
    if name == "prompt-lookup":
        return Method(name, lambda: {"prompt_lookup_num_tokens": 10, "max_matching_ngram_size": 2})
    if drafter is None:
        raise ValueError(f"method {name!r} needs a drafter")
    if name == "hf-assisted":
        return Method(name, lambda: {"assistant_model": drafter})
    if name == "full-vocab":
        config = EvoSpecConfig(shortlist="full", **draft)
        return Method(name, lambda: {"assistant_model": drafter, "evospec_config": config}, drafts=True)
    match = _SIZED.match(name)
    if match is None:
        raise ValueError(
            f"unknown method {name!r}; choose from target, hf-assisted, prompt-lookup, full-vocab, and "
            f"{', '.join(SHORTLISTS)} with an optional size suffix such as -16k"
        )
    kind, size = match.group(1), int(match.group(2) or 16) * 1024
    name = f"{kind}-{size // 1024}k"
    options = {"shortlist": SHORTLISTS[kind], "shortlist_size": size, **draft}
    if kind == "vocabtrim":
        path = os.path.join(drafter_folder(drafter), VOCABTRIM_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"vocabtrim needs {VOCABTRIM_NAME} in the drafter folder ({path!r} is missing): build it with "
                "`evospec-hf build-vocabtrim-shortlist --checkpoint <drafter folder>`."
            )
        options["static_shortlist_path"] = path
    config = EvoSpecConfig(**options)
    if kind != "evospec-online":
        return Method(name, lambda: {"assistant_model": drafter, "evospec_config": config}, drafts=True)
    if adapting_drafter is None:
        raise ValueError("evospec-online needs `adapting_drafter` (the drafter loaded with merge_adapter=False)")

    def with_session() -> dict:
        session = EvoSpecSession(adapting_drafter, online)
        return {"assistant_model": session.drafter, "evospec_config": config, "evospec_session": session}

    return Method(name, with_session, drafts=True)
