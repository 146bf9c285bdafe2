"""How evospec_hf plugs into `transformers`' `generate`.

Both entry points reuse transformers' own assisted-decoding loop (`GenerationMixin._assisted_decoding`): the target
verifies over the full vocabulary exactly as in plain assisted generation. The only thing evospec_hf changes is the
candidate generator, which that loop obtains by calling `model._get_candidate_generator(...)`. `evospec_drafting`
shadows that method on the model instance while a call runs, and the shadow hands each thread its own generator
(threads with no evospec_hf call get transformers' own), so calls on several threads can share one model.

1. `import evospec_hf` wraps `GenerationMixin.generate` so that it accepts `evospec_config=`:

       model.generate(**inputs, assistant_model=drafter, evospec_config=EvoSpecConfig(...))

   A call without `evospec_config` goes straight to the original `generate`, untouched. (It also wraps
   `GenerationMixin._validate_model_kwargs`, to refuse by name a class whose own `generate` bypasses the wrapper.)
2. Without that wrapper, through transformers' official `custom_generate=` hook:

       model.generate(**inputs, custom_generate=evospec_hf.custom_generate, drafter=drafter,
                      evospec_config=EvoSpecConfig(...))

   (transformers hands a callable only its own extra arguments, so the drafter is passed as `drafter=`.)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import threading
import weakref
from types import SimpleNamespace

import torch

from transformers import (
    GenerationConfig, GenerationMixin, LogitsProcessorList, StopStringCriteria, StoppingCriteriaList,
    TemperatureLogitsWarper, TopKLogitsWarper,
)  # fmt: skip

from ..config import EvoSpecConfig
from ..locks import drafter_lock
from ..ops.calibration import machine_costs, save_machine_costs
from ..ops.verify_head import HeadScreen, columns_verify_head
from .batched import SCORES_ONLY, BatchCosts, batched_assisted_decoding
from .candidate_generator import EvoSpecCandidateGenerator
from .session_protocol import SessionProtocol
from .stats import DraftStats
from .support import check_cache_use, check_supported, own_generate_refusal

# a reload of this module must not wrap the wrapper
_original_generate = getattr(GenerationMixin.generate, "__evospec_original__", GenerationMixin.generate)
_original_validate_model_kwargs = getattr(
    GenerationMixin._validate_model_kwargs, "__evospec_original__", GenerationMixin._validate_model_kwargs
)


@contextlib.contextmanager
def evospec_drafting(
    model,
    evospec_config: EvoSpecConfig,
    stats: DraftStats | None = None,
    session: SessionProtocol | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    prepared_criteria: StoppingCriteriaList | None = None,
):
    """Within this block, assisted decoding on `model` *on this thread* drafts with `EvoSpecCandidateGenerator`.

    With an `EvoSpecSession`, the drafter carries that session's adapter for the block and learns online; when the
    block ends, the session keeps what was learned and the drafter gets its own weights back. Several threads may
    hold blocks on one model at once, each with its own drafting state. Calls on one drafter share it; a call with
    a session has it to itself (it swaps weights in), so such calls wait for each other and for calls without one.

    Drafts are cut where a stopping criterion would fire (`stopping.py`), so generation stops where plain
    `generate` stops.

    Args:
        stopping_criteria: the user's own criteria (`generate(stopping_criteria=...)`); transformers' criteria from
            the generation config (`stop_strings`, `max_time`, EOS, ...) are added as `generate` adds them.
        prepared_criteria: instead, the call's criteria as transformers prepared them (a `custom_generate` loop
            receives these), used as they are.

    Yields a namespace whose `generator` is the candidate generator once transformers has asked for it.
    """
    check_arguments(evospec_config, stats, session)
    target_head = model.get_output_embeddings()
    target_vocab_size = (
        target_head.weight.shape[0] if target_head is not None else model.config.get_text_config().vocab_size
    )
    # the call's generator, and what it holds (the drafter's lock) until it is closed
    drafting = SimpleNamespace(generator=None, holds=contextlib.ExitStack())

    def finish_call():
        try:
            if drafting.generator is not None:
                drafting.generator.close()
        finally:
            drafting.holds.close()

    def make_generator(  # transformers passes these by name (`inputs_tensor` and `model_kwargs` are not needed)
        generation_config, input_ids, inputs_tensor, logits_processor, model_kwargs,
        assistant_model=None, target_tokenizer=None, assistant_tokenizer=None, **newer_arguments,
    ):  # fmt: skip
        # transformers' own `_get_candidate_generator` signature; keywords a later transformers adds are checked
        check_newer_arguments(newer_arguments)
        check_request(generation_config, assistant_model, assistant_tokenizer)
        check_supported(model, assistant_model)
        call_config = honour_transformers_drafting(
            evospec_config, prepared_drafting_fields(generation_config), assistant_model
        )
        criteria = prepared_criteria
        if criteria is None:  # the criteria `generate` built for this call: the same merge of config and user's
            criteria = model._get_stopping_criteria(
                generation_config=generation_config,
                stopping_criteria=stopping_criteria if stopping_criteria is not None else StoppingCriteriaList(),
                tokenizer=target_tokenizer,
            )
        finish_call()  # a second generate call inside one block: the first one is over
        lock = drafter_lock(assistant_model)
        if session is not None:
            session.pause_learning()  # before waiting for the drafter: its background learning yields to this call
        drafting.holds.enter_context(lock.exclusive() if session is not None else lock.shared())
        generator = EvoSpecCandidateGenerator(
            input_ids=input_ids,
            assistant_model=assistant_model,
            generation_config=generation_config,
            evospec_config=call_config,
            target_vocab_size=target_vocab_size,
            logits_processor=logits_processor,
            stats=stats,
            session=session,
            verify_seconds=machine_costs(model, "verify_seconds"),
            stopping_criteria=criteria,
            target=model,
        )
        drafting.generator = generator
        if screen is not None:  # after the generator: lossy acceptance adds a processor that reads the scores
            screen.top_k, _ = screen_plan(generation_config, logits_processor)
            screen.enabled = screen.top_k > 0
        return generator

    # A seeded learning session is reproducible only if the teacher's logits are: the tuned head's timing trials
    # would pick each round's matmul order by the clock, and rounding differences grow through learning.
    # A learning session's teacher reads every logit, so it never has the screen either.
    tune_head = evospec_config.fast_verify_head and not (session is not None and session.online)
    screen = HeadScreen(mode=evospec_config.screen_head) if tune_head and evospec_config.screen_head != "off" else None
    with _candidate_generator_for(model, make_generator):
        with columns_verify_head(model, screen) if tune_head else contextlib.nullcontext():
            try:
                yield drafting
            finally:
                finish_call()
                if stats is not None and screen is not None:
                    stats.add_screen(screen)
                save_machine_costs()


def screen_plan(generation_config, logits_processor, max_rows: int = HeadScreen.max_survivors) -> tuple[int, str | None]:
    """Whether this call may screen the target's LM head: `(top_k, None)` if it may, keeping each position's
    `top_k` best rows exact (1 for greedy), or `(0, reason)` if it may not.

    The screen (`ops/screened_head.py`) keeps each position's best rows exact and sets every other row it excludes
    to -inf. Greedy reads the argmax of the raw logits. Sampling reads every probability, unless a top-k filter comes
    first: a temperature (monotone) may precede it, any processor may follow it, as it sees the same top k either way.
    """
    if (generation_config.num_beams or 1) > 1:
        return 0, "beam search ranks every logit"
    if generation_config.output_scores or generation_config.output_logits:
        return 0, "`output_scores` / `output_logits` return every logit"
    processors = list(logits_processor or [])
    if not generation_config.do_sample:
        if processors:
            return 0, f"logits processors may change scores ({', '.join(type(p).__name__ for p in processors)})"
        return 1, None
    for processor in processors:
        if isinstance(processor, TopKLogitsWarper):
            if processor.filter_value != float("-inf"):
                return 0, f"a top-k filter with filter_value={processor.filter_value} keeps every logit"
            if processor.top_k > max_rows:
                return 0, f"top_k={processor.top_k} is above the screen's {max_rows} rows"
            return processor.top_k, None
        if not isinstance(processor, TemperatureLogitsWarper):
            return 0, f"sampling with {type(processor).__name__} before a top-k filter reads every probability"
    return 0, "sampling without `top_k` reads every probability"


def check_arguments(evospec_config, stats, session) -> None:
    """Clear errors for arguments of the wrong kind, and a config changed into an invalid one since it was made."""
    if not isinstance(evospec_config, EvoSpecConfig):
        raise TypeError(f"`evospec_config` must be an EvoSpecConfig, got {type(evospec_config).__name__}.")
    evospec_config.validate()
    if stats is not None and not isinstance(stats, DraftStats):
        raise TypeError(f"`evospec_stats` must be a DraftStats (or None), got {type(stats).__name__}: {stats!r}.")
    if session is not None and not isinstance(session, SessionProtocol):
        raise TypeError(
            f"`evospec_session` must be an EvoSpecSession (or None), got {type(session).__name__}: {session!r}."
        )


def check_request(generation_config, drafter, assistant_tokenizer=None) -> None:
    """Clear errors for generation flags evospec_hf cannot draft for."""
    if drafter is None:
        raise ValueError("`evospec_config` needs a drafter: pass `assistant_model=` (or `drafter=`).")
    if assistant_tokenizer is not None:
        raise ValueError(
            "evospec_hf needs a drafter that shares the target's tokenizer; drop `assistant_tokenizer` "
            "(and `evospec_config` if the tokenizers really differ)."
        )
    if generation_config.num_beams > 1 or generation_config.num_return_sequences > 1:
        raise ValueError(
            "evospec_hf supports num_beams=1 and num_return_sequences=1 only, got "
            f"num_beams={generation_config.num_beams}, "
            f"num_return_sequences={generation_config.num_return_sequences}."
        )
    # transformers' other drafting strategies, each chosen by a generation flag: refused by name, never overridden
    for name in ("prompt_lookup_num_tokens", "assistant_early_exit", "use_mtp", "speculation_type"):
        if getattr(generation_config, name, None) not in (None, False):
            raise ValueError(
                f"`{name}` selects another drafting strategy; it cannot be combined with `evospec_config`."
            )


# -- transformers' own drafting options ------------------------------------------------------------------------------
# transformers' assisted-decoding fields, and the EvoSpecConfig field that holds the same choice
TRANSFORMERS_DRAFTING_FIELDS = {
    "num_assistant_tokens": "num_draft_tokens",
    "num_assistant_tokens_schedule": "draft_schedule",
    "assistant_confidence_threshold": "confidence_threshold",
}
# transformers' schedules that evospec_hf's `draft_schedule` has ("heuristic" is refused: see `_evospec_value`)
_SCHEDULES = {"constant": "constant", "heuristic_transient": "heuristic"}
# a keyword of `_get_candidate_generator` whose name holds one of these is about drafting
_DRAFTING_WORDS = ("assistant", "draft", "candidate", "specul")


def check_newer_arguments(arguments: dict) -> None:
    """Keywords a later transformers passes to `_get_candidate_generator` that evospec_hf does not know: ignored when
    they are not about drafting (or carry None or False), refused when they are, as evospec_hf cannot honour them."""
    for name, value in arguments.items():
        if value is not None and value is not False and any(word in name for word in _DRAFTING_WORDS):
            raise ValueError(
                f"transformers asked for a candidate generator with `{name}={value!r}`, a drafting option this "
                "evospec_hf does not know. Drop it, or drop `evospec_config` to let transformers draft."
            )


def given_drafting_fields(model, kwargs: dict) -> dict:
    """transformers' drafting fields a `generate` call sets (`_call_option`), where they are not None."""
    found = {name: _call_option(model, kwargs, name) for name in TRANSFORMERS_DRAFTING_FIELDS}
    return {name: value for name, value in found.items() if value is not None}


def _call_option(model, kwargs: dict, name: str):
    """A generation option of a `generate` call: its keyword first, then the `generation_config` it passes, then the
    target's own, the first that is not None (transformers' order of precedence)."""
    configs = [kwargs.get("generation_config"), model.generation_config]
    values = [kwargs.get(name), *(getattr(config, name, None) for config in configs if config is not None)]
    return next((v for v in values if v is not None), None)


def prepared_drafting_fields(generation_config) -> dict:
    """transformers' drafting fields of a call's prepared generation config that the caller set. transformers fills
    the fields nobody set with its defaults (`num_assistant_tokens=20`, ...), so a value equal to its default counts
    as not set here (`given_drafting_fields`, which sees what the call was given, also tells those apart)."""
    defaults = GenerationConfig._get_default_generation_params()
    found = {}
    for name in TRANSFORMERS_DRAFTING_FIELDS:
        value = getattr(generation_config, name, None)
        if value is not None and value != defaults.get(name):
            found[name] = value
    return found


def honour_transformers_drafting(evospec_config: EvoSpecConfig, call_fields: dict, drafter) -> EvoSpecConfig:
    """`evospec_config` for one call, with transformers' drafting fields that the caller set carried over to the
    EvoSpecConfig field of the same meaning (`TRANSFORMERS_DRAFTING_FIELDS`), or a ValueError where they cannot be.

    `call_fields`: the fields the call set (`given_drafting_fields`, `prepared_drafting_fields`). Where the call sets
    none, the drafter's `generation_config` may (transformers' own drafting reads them there). A field is carried over
    when the EvoSpecConfig field is at its default or already holds the same value; otherwise both disagree, and the
    call is refused rather than one of them ignored. transformers' `num_assistant_tokens_schedule="heuristic"`, which
    keeps the draft length for the next call in the drafter's generation config, is refused (evospec_hf writes
    nothing into the user's models); `assistant_confidence_threshold` becomes a fixed `confidence_threshold`.
    """
    drafter_config = getattr(drafter, "generation_config", None)
    changes = {}
    for name, field_name in TRANSFORMERS_DRAFTING_FIELDS.items():
        if call_fields.get(name) is not None:
            value, where = call_fields[name], "the call's generation options"
        elif getattr(drafter_config, name, None) is not None:
            value, where = getattr(drafter_config, name), "the drafter's generation_config"
        else:
            continue
        wanted, current = _evospec_value(name, value, where), getattr(evospec_config, field_name)
        if wanted == current:
            continue
        if current != EvoSpecConfig.__dataclass_fields__[field_name].default:
            raise ValueError(
                f"`{name}={value!r}` ({where}) and `EvoSpecConfig({field_name}={current!r})` disagree. With "
                f"`evospec_config`, set it once, as `EvoSpecConfig({field_name}=...)`."
            )
        changes[field_name] = wanted
    if not changes:
        return evospec_config
    try:
        return dataclasses.replace(evospec_config, **changes)
    except ValueError as error:
        fields = ", ".join(f"{k}={v!r}" for k, v in changes.items())
        raise ValueError(f"transformers' drafting options of this call ask EvoSpecConfig({fields}): {error}") from None


def _evospec_value(name: str, value, where: str):
    """The EvoSpecConfig value for transformers' drafting field `name` set to `value`."""
    if name == "num_assistant_tokens_schedule":
        if value == "heuristic":
            raise ValueError(
                f"`num_assistant_tokens_schedule='heuristic'` ({where}) keeps the draft length for the next call by "
                "writing it into the drafter's generation_config, which evospec_hf does not do. With "
                "`evospec_config`, use `EvoSpecConfig(draft_schedule='heuristic')` (it starts from "
                "`num_draft_tokens` at every call) or `draft_schedule='cost'` (the default)."
            )
        if value not in _SCHEDULES:
            raise ValueError(
                f"`num_assistant_tokens_schedule={value!r}` ({where}) is not a schedule evospec_hf knows; with "
                "`evospec_config`, use `EvoSpecConfig(draft_schedule=...)`."
            )
        return _SCHEDULES[value]
    if name == "assistant_confidence_threshold" and value == 0:
        return None  # transformers: 0 turns the threshold off
    return value

def batched_generate(
    model,
    input_ids,
    logits_processor,
    stopping_criteria,
    generation_config,
    drafter,
    evospec_config: EvoSpecConfig,
    stats: DraftStats | None = None,
    session: SessionProtocol | None = None,
    **model_kwargs,
):
    """Speculative decoding of a left-padded batch (`batched.py`): one candidate generator per row, one batched
    verification per round. Reached through both entry points when the batch has more than one row.

    `stats` receives the totals over the rows (`verify_seconds`: the batched verifications' wall time) and each
    row's own `DraftStats` in `stats.rows`.
    """
    check_arguments(evospec_config, stats, session)
    check_request(generation_config, drafter)
    check_supported(model, drafter)
    evospec_config = honour_transformers_drafting(evospec_config, prepared_drafting_fields(generation_config), drafter)
    if session is not None:
        raise ValueError(
            "an EvoSpecSession learns from one sequence at a time, but this call has a batch of "
            f"{input_ids.shape[0]}. Drop `evospec_session` for batched calls (the drafter then drafts with the "
            "weights it has), or call generate once per prompt with the session."
        )
    if evospec_config.lossy_acceptance is not None:
        raise ValueError("`lossy_acceptance` is not supported for a batch; call generate once per prompt.")
    target_head = model.get_output_embeddings()
    target_vocab_size = (
        target_head.weight.shape[0] if target_head is not None else model.config.get_text_config().vocab_size
    )
    # a batched round costs more than one row's: the rows' draft length rules share a table the loop keeps
    costs = BatchCosts(machine_costs(model, "verify_seconds"), input_ids.shape[0],
                       max(evospec_config.max_draft_tokens, evospec_config.lookup_tokens))  # fmt: skip

    # a row drafts alone, so its drafts get the scores-only warpers (temperature, top-k, ...): the call's other
    # processors may keep state per row of the batch; they act where it counts, in the batched verification
    draft_processors = LogitsProcessorList([p for p in logits_processor or [] if isinstance(p, SCORES_ONLY)])

    def new_generator(row_ids, row_stats):
        return EvoSpecCandidateGenerator(
            input_ids=row_ids, assistant_model=drafter, generation_config=generation_config,
            evospec_config=evospec_config, target_vocab_size=target_vocab_size, logits_processor=draft_processors,
            stats=row_stats, verify_seconds=costs.table, stopping_criteria=stopping_criteria, target=model,
            in_batch=True,
        )  # fmt: skip

    # a screen object even with screen_head="off" (then never enabled): it tells the head which positions are read
    screen = HeadScreen(mode=evospec_config.screen_head)
    use_screen = evospec_config.fast_verify_head and evospec_config.screen_head != "off"
    with drafter_lock(drafter).shared():
        with columns_verify_head(model, screen) if evospec_config.fast_verify_head else contextlib.nullcontext():
            if use_screen:
                screen.top_k, _ = screen_plan(generation_config, logits_processor)
                screen.enabled = screen.top_k > 0
            try:
                sequences, row_stats, seconds = batched_assisted_decoding(
                    model, input_ids, logits_processor, stopping_criteria, generation_config, new_generator,
                    model_kwargs, alignment=evospec_config.batch_alignment, costs=costs, screen=screen,
                )  # fmt: skip
            finally:
                if stats is not None:
                    stats.add_screen(screen)
                save_machine_costs()
    if stats is not None:
        stats.add_rows(row_stats, seconds)
    return sequences


# -- routing transformers' `_get_candidate_generator` to the calling thread's evospec_hf block ----------------------
# transformers' loop asks `model._get_candidate_generator(...)` for its drafter. While any thread holds an
# `evospec_drafting` block on a model, that method is shadowed on the instance by a dispatcher: a thread inside a
# block gets its own generator, any other thread transformers' own. The shadow is installed by the first block and
# removed by the last.
_local = threading.local()  # .factories: {model: make_generator} of the blocks this thread holds
_shadows: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> blocks open on it (all threads)
_shadows_lock = threading.Lock()


def _thread_factories() -> dict:
    factories = getattr(_local, "factories", None)
    if factories is None:
        factories = _local.factories = {}
    return factories


@contextlib.contextmanager
def _candidate_generator_for(model, make_generator):
    factories = _thread_factories()
    if model in factories:
        raise RuntimeError(
            f"{type(model).__name__} is already generating with evospec_hf on this thread (a generate call inside "
            "another one on the same model, e.g. from a streamer or a logits processor, is not supported)."
        )
    with _shadows_lock:
        if _shadows.get(model, 0) == 0:
            model._get_candidate_generator = functools.partial(_dispatch, weakref.ref(model))
        _shadows[model] = _shadows.get(model, 0) + 1
    factories[model] = make_generator
    try:
        yield
    finally:
        del factories[model]
        with _shadows_lock:
            _shadows[model] -= 1
            if _shadows[model] == 0:
                del _shadows[model]
                vars(model).pop("_get_candidate_generator", None)


def _dispatch(model_ref, *args, **kwargs):
    model = model_ref()
    make_generator = _thread_factories().get(model)
    if make_generator is None:  # plain assisted decoding on a thread with no evospec_hf block
        return type(model)._get_candidate_generator(model, *args, **kwargs)
    return make_generator(*args, **kwargs)


@functools.wraps(_original_generate)
def generate(
    self,
    *args,
    evospec_config: EvoSpecConfig | None = None,
    evospec_stats: DraftStats | None = None,
    evospec_session=None,
    **kwargs,
):
    """`GenerationMixin.generate`, plus `evospec_config=` to draft with evospec_hf (see the module docstring).

    `evospec_stats=DraftStats()` is filled with the rounds, drafted and accepted tokens of the call.
    `evospec_session=EvoSpecSession(drafter)` adapts the drafter online, within that session only.
    """
    if not _enabled:  # uninstalled while another library's wrapper still calls this one
        if evospec_config is not None or evospec_stats is not None or evospec_session is not None:
            raise ValueError(
                "evospec_hf.uninstall() was called: `generate` no longer accepts `evospec_config`. Call "
                "evospec_hf.install() again, or use custom_generate=evospec_hf.custom_generate."
            )
        return _original_generate(self, *args, **kwargs)
    if kwargs.get("custom_generate") is not None:
        # path 2, `screened_greedy` (or a user's own loop): the callable receives the evospec arguments given
        if kwargs["custom_generate"] is custom_generate and kwargs.get("drafter") is not None:
            # only here are the call's own keywords seen (see `prepared_drafting_fields`)
            evospec_config = _honour_given(self, evospec_config or EvoSpecConfig(), kwargs, kwargs["drafter"])
        given = {"evospec_config": evospec_config, "evospec_stats": evospec_stats, "evospec_session": evospec_session}
        return _original_generate(self, *args, **{k: v for k, v in given.items() if v is not None}, **kwargs)
    if evospec_config is None:
        if evospec_stats is not None or evospec_session is not None:
            raise ValueError("`evospec_stats` and `evospec_session` need `evospec_config`.")
        return _original_generate(self, *args, **kwargs)
    if kwargs.get("assistant_model") is None:
        raise ValueError("`evospec_config` needs a drafter: pass `assistant_model=<drafter model>`.")
    check_supported(self, kwargs["assistant_model"])  # before transformers prepares anything
    check_cache_use(self, _call_option(self, kwargs, "use_cache"))
    evospec_config = _honour_given(self, evospec_config, kwargs, kwargs["assistant_model"])
    if _batch_size(args, kwargs) > 1:  # transformers' assisted loop takes one row: the batch takes evospec_hf's own
        if kwargs.get("streamer") is not None:
            raise ValueError("a streamer follows one sequence; pass one prompt, or drop `streamer` for a batch.")
        kwargs = _stop_strings_as_criterion(self, kwargs)
        return _original_generate(
            self, *args, custom_generate=custom_generate, drafter=kwargs.pop("assistant_model"),
            evospec_config=evospec_config, evospec_stats=evospec_stats, evospec_session=evospec_session, **kwargs,
        )  # fmt: skip
    with evospec_drafting(
        self, evospec_config, evospec_stats, evospec_session, stopping_criteria=kwargs.get("stopping_criteria")
    ) as drafting:
        output = _original_generate(self, *args, **kwargs)
    if drafting.generator is None:
        # e.g. num_beams > 1: transformers then runs beam search and only logs that the assistant is ignored
        raise ValueError(
            "transformers did not run assisted decoding for these generation flags (num_beams > 1, or another "
            "decoding strategy), so `evospec_config` would be ignored. Use greedy or sampling with num_beams=1."
        )
    return output


generate.__evospec_original__ = _original_generate


def _honour_given(model, evospec_config, kwargs: dict, drafter):
    """`honour_transformers_drafting` over what this `generate` call was given (other types of `evospec_config` are
    refused with a clear error further on)."""
    if not isinstance(evospec_config, EvoSpecConfig):
        return evospec_config
    return honour_transformers_drafting(evospec_config, given_drafting_fields(model, kwargs), drafter)


def _stop_strings_as_criterion(model, kwargs: dict) -> dict:
    """`kwargs` with `stop_strings` turned into a `StopStringCriteria` among the stopping criteria.

    transformers takes `tokenizer=` away before it calls a `custom_generate` callable, and then cannot build the
    criterion for `stop_strings`; a batch runs through `custom_generate`, so the criterion is built here, as plain
    `generate` builds it. Without a tokenizer, transformers' own error follows.
    """
    config = kwargs.get("generation_config") or model.generation_config
    stop_strings = kwargs.get("stop_strings", getattr(config, "stop_strings", None))
    tokenizer = kwargs.get("tokenizer")
    if stop_strings is None or tokenizer is None:
        return kwargs
    criteria = StoppingCriteriaList(
        [*(kwargs.get("stopping_criteria") or []), StopStringCriteria(tokenizer, stop_strings)]
    )
    kwargs = dict(kwargs, stopping_criteria=criteria)
    if "generation_config" not in kwargs:
        return dict(kwargs, stop_strings=None)  # over the model's own generation config
    kwargs.pop("stop_strings", None)
    kwargs["generation_config"] = copy.deepcopy(config)
    kwargs["generation_config"].stop_strings = None
    return kwargs


def _batch_size(args, kwargs) -> int:
    """The batch size of a `generate` call's inputs (1 if it cannot tell)."""
    first = args[0] if args else None
    for value in (first, kwargs.get("inputs"), kwargs.get("input_ids"), kwargs.get("inputs_embeds")):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return value.shape[0]
    return 1


_enabled = True  # False after `uninstall()` while another library's wrapper still calls ours


def install() -> None:
    """Makes every model's `generate` accept `evospec_config=` (done by `import evospec_hf`; idempotent)."""
    global _enabled
    _enabled = True
    if not _wrapped_by_us(GenerationMixin.generate):
        GenerationMixin.generate = generate
    GenerationMixin._validate_model_kwargs = _validate_model_kwargs


def _validate_model_kwargs(self, model_kwargs: dict):
    """transformers' check of a call's model keywords, plus: `evospec_config` reaching it means the call bypassed
    evospec_hf's wrapper, as a class with its own `generate` (MusicGen's) does. That is refused by name, where
    transformers would only list `evospec_config` among keywords "not used by the model"."""
    if _enabled and "evospec_config" in model_kwargs and not _wrapped_by_us(type(self).generate):
        raise own_generate_refusal(self)
    return _original_validate_model_kwargs(self, model_kwargs)


_validate_model_kwargs.__evospec_original__ = _original_validate_model_kwargs


def uninstall() -> None:
    """Takes evospec_hf's wrapper off `generate`.

    If another library wrapped `generate` after evospec_hf (its wrapper calls ours), that wrapper stays in place:
    removing ours from under it would also remove theirs. Ours then passes every call straight through, exactly as
    transformers' own `generate` (`evospec_config=` is refused), until `install()` is called again.
    """
    global _enabled
    _enabled = False
    if GenerationMixin.generate is generate:
        GenerationMixin.generate = _original_generate
    GenerationMixin._validate_model_kwargs = _original_validate_model_kwargs


def _wrapped_by_us(method) -> bool:
    """Whether `method` is evospec_hf's wrapper, or a wrapper (`functools.wraps`) around it."""
    while method is not None:
        if method is generate:
            return True
        method = getattr(method, "__wrapped__", None)
    return False


def custom_generate(
    model,
    input_ids,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    drafter=None,
    evospec_config: EvoSpecConfig | None = None,
    evospec_stats: DraftStats | None = None,
    evospec_session=None,
    **model_kwargs,
):
    """Decoding loop for `model.generate(..., custom_generate=custom_generate, drafter=..., evospec_config=...)`.

    transformers calls it after preparing inputs, cache, processors and stopping criteria. It does not forward
    `streamer=` to callables; use `evospec_config=` with `assistant_model=` (path 1) to stream.
    """
    if drafter is None:
        raise ValueError("`custom_generate=evospec_hf.custom_generate` needs the drafter as `drafter=`.")
    check_supported(model, drafter)
    check_cache_use(model, model_kwargs.get("use_cache"))
    evospec_config = evospec_config if evospec_config is not None else EvoSpecConfig()
    if input_ids.shape[0] > 1:
        return batched_generate(
            model, input_ids, logits_processor, stopping_criteria, generation_config, drafter, evospec_config,
            evospec_stats, evospec_session, **model_kwargs,
        )  # fmt: skip
    with evospec_drafting(model, evospec_config, evospec_stats, evospec_session, prepared_criteria=stopping_criteria):
        return GenerationMixin._assisted_decoding(
            model,
            input_ids,
            logits_processor=logits_processor,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            inputs_tensor=input_ids,
            assistant_model=drafter,
            **model_kwargs,
        )


def screened_greedy(
    model,
    input_ids,
    logits_processor,
    stopping_criteria,
    generation_config,
    synced_gpus: bool = False,
    evospec_config: EvoSpecConfig | None = None,
    evospec_stats: DraftStats | None = None,
    **model_kwargs,
):
    """Plain decoding, no drafter, with the target's LM head screened wherever that is exact (greedy with no logits
    processor, or sampling whose first filter is `top_k`; no `output_scores`/`output_logits`; see `screen_plan` and
    `EvoSpecConfig.screen_head`):

        model.generate(**inputs, custom_generate=evospec_hf.screened_greedy, max_new_tokens=128)

    The tokens are plain greedy's (and plain top-k sampling's, from the same seed). Other calls run transformers' own
    loop with the full head. `evospec_config=EvoSpecConfig(screen_head=...)` chooses the mode;
    `evospec_stats=DraftStats()` receives the screen's counts (`screen_*`). transformers does not forward
    `streamer=` to a `custom_generate` callable.
    """
    evospec_config = evospec_config if evospec_config is not None else EvoSpecConfig()
    check_arguments(evospec_config, evospec_stats, None)
    if generation_config.num_beams > 1:
        raise ValueError(
            f"`screened_greedy` decodes one beam (greedy or sampling), got num_beams={generation_config.num_beams}; "
            "drop `custom_generate` for beam search."
        )
    use_screen = evospec_config.fast_verify_head and evospec_config.screen_head != "off"
    screen = HeadScreen(mode=evospec_config.screen_head) if use_screen else None
    with columns_verify_head(model, screen) if use_screen else contextlib.nullcontext():
        if screen is not None:
            screen.top_k, _ = screen_plan(generation_config, logits_processor)
            screen.enabled = screen.top_k > 0
        try:
            return GenerationMixin._sample(
                model, input_ids, logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                generation_config=generation_config, synced_gpus=synced_gpus, **model_kwargs,
            )  # fmt: skip
        finally:
            if evospec_stats is not None and screen is not None:
                evospec_stats.add_screen(screen)
            save_machine_costs()
