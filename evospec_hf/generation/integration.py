"""How evospec_hf plugs into `transformers`' `generate`.

Both entry points reuse transformers' own assisted-decoding loop (`GenerationMixin._assisted_decoding`): the target
verifies over the full vocabulary exactly as in plain assisted generation. The only thing evospec_hf changes is the
candidate generator, which that loop obtains by calling `model._get_candidate_generator(...)`. `evospec_drafting`
shadows that method on the one model instance for the duration of one call, then removes it.

1. `import evospec_hf` wraps `GenerationMixin.generate` so that it accepts `evospec_config=`:

       model.generate(**inputs, assistant_model=drafter, evospec_config=EvoSpecConfig(...))

   A call without `evospec_config` goes straight to the original `generate`, untouched.
2. Without that wrapper, through transformers' official `custom_generate=` hook:

       model.generate(**inputs, custom_generate=evospec_hf.custom_generate, drafter=drafter,
                      evospec_config=EvoSpecConfig(...))

   (transformers hands a callable only its own extra arguments, so the drafter is passed as `drafter=`.)
"""

from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace

from transformers import GenerationMixin

from ..config import EvoSpecConfig
from ..ops.verify_head import columns_verify_head
from .candidate_generator import DraftStats, EvoSpecCandidateGenerator

# a reload of this module must not wrap the wrapper
_original_generate = getattr(GenerationMixin.generate, "__evospec_original__", GenerationMixin.generate)


@contextlib.contextmanager
def evospec_drafting(model, evospec_config: EvoSpecConfig, stats: DraftStats | None = None, session=None):
    """Within this block, assisted decoding on `model` drafts with `EvoSpecCandidateGenerator` (filling `stats`).

    With an `EvoSpecSession`, the drafter carries that session's adapter for the block and learns online; when the
    block ends, the session keeps what was learned and the drafter gets its own weights back.

    Yields a namespace whose `generator` is the candidate generator once transformers has asked for it.
    """
    if not isinstance(evospec_config, EvoSpecConfig):
        raise TypeError(f"`evospec_config` must be an EvoSpecConfig, got {type(evospec_config).__name__}.")
    if "_get_candidate_generator" in vars(model):
        raise RuntimeError(
            f"{type(model).__name__} is already generating with evospec_hf (nested or concurrent generate calls on "
            "one model are not supported)."
        )
    target_head = model.get_output_embeddings()
    target_vocab_size = (
        target_head.weight.shape[0] if target_head is not None else model.config.get_text_config().vocab_size
    )

    drafting = SimpleNamespace(generator=None)

    def _get_candidate_generator(
        generation_config,
        input_ids,
        inputs_tensor,
        logits_processor,
        model_kwargs,
        assistant_model=None,
        target_tokenizer=None,
        assistant_tokenizer=None,
    ):
        if assistant_model is None:
            raise ValueError("`evospec_config` needs a drafter: pass `assistant_model=` (or `drafter=`).")
        if assistant_tokenizer is not None:
            raise ValueError(
                "evospec_hf needs a drafter that shares the target's tokenizer; drop `assistant_tokenizer` "
                "(and `evospec_config` if the tokenizers really differ)."
            )
        if generation_config.num_beams > 1 or generation_config.num_return_sequences > 1:
            raise ValueError(
                "evospec_hf supports num_beams=1 and num_return_sequences=1 only, got "
                f"num_beams={generation_config.num_beams}, num_return_sequences={generation_config.num_return_sequences}."
            )
        for name in ("prompt_lookup_num_tokens", "assistant_early_exit"):
            if getattr(generation_config, name, None) is not None:
                raise ValueError(f"`{name}` selects another drafting strategy; it cannot be combined with `evospec_config`.")
        drafting.generator = EvoSpecCandidateGenerator(
            input_ids=input_ids,
            assistant_model=assistant_model,
            generation_config=generation_config,
            model_kwargs=model_kwargs,
            evospec_config=evospec_config,
            target_vocab_size=target_vocab_size,
            inputs_tensor=inputs_tensor,
            logits_processor=logits_processor,
            stats=stats,
            session=session,
            verify_seconds=_verify_seconds_table(model),
        )
        return drafting.generator

    model._get_candidate_generator = _get_candidate_generator
    with contextlib.ExitStack() as stack:
        if evospec_config.fast_verify_head:
            stack.enter_context(columns_verify_head(model))
        try:
            yield drafting
        finally:
            del model._get_candidate_generator
            if drafting.generator is not None:
                drafting.generator.close()


def _verify_seconds_table(model) -> dict:
    """The target's verification seconds per draft length for `draft_schedule="cost"`: a property of the model, its
    device and dtype, and the machine, so it is kept on the model across `generate` calls."""
    head = model.get_output_embeddings()
    weight = head.weight if head is not None else next(model.parameters())
    tables = model.__dict__.setdefault("_evospec_verify_seconds", {})
    return tables.setdefault((str(weight.device), str(weight.dtype)), {})


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
    if evospec_config is None:
        if evospec_stats is not None or evospec_session is not None:
            raise ValueError("`evospec_stats` and `evospec_session` need `evospec_config`.")
        return _original_generate(self, *args, **kwargs)
    if kwargs.get("custom_generate") is not None:
        # path 2 (or a user's own loop): the callable receives the evospec arguments itself
        return _original_generate(
            self, *args, evospec_config=evospec_config, evospec_stats=evospec_stats, evospec_session=evospec_session,
            **kwargs,
        )  # fmt: skip
    if kwargs.get("assistant_model") is None:
        raise ValueError("`evospec_config` needs a drafter: pass `assistant_model=<drafter model>`.")
    with evospec_drafting(self, evospec_config, evospec_stats, evospec_session) as drafting:
        output = _original_generate(self, *args, **kwargs)
    if drafting.generator is None:
        # e.g. num_beams > 1: transformers then runs beam search and only logs that the assistant is ignored
        raise ValueError(
            "transformers did not run assisted decoding for these generation flags (num_beams > 1, or another "
            "decoding strategy), so `evospec_config` would be ignored. Use greedy or sampling with num_beams=1."
        )
    return output


generate.__evospec_original__ = _original_generate


def install() -> None:
    """Makes every model's `generate` accept `evospec_config=` (done by `import evospec_hf`; idempotent)."""
    GenerationMixin.generate = generate


def uninstall() -> None:
    """Restores transformers' own `generate`."""
    GenerationMixin.generate = _original_generate


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
    evospec_config = evospec_config if evospec_config is not None else EvoSpecConfig()
    if model._is_stateful:
        raise ValueError(f"speculative decoding cannot roll back a stateful model such as {type(model).__name__}.")
    with evospec_drafting(model, evospec_config, evospec_stats, evospec_session):
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
