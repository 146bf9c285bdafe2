"""Which architectures evospec_hf can run exactly, decided before any work: `check_supported(target, drafter)`.

Speculative decoding reads several drafted positions in one forward, then throws away the rejected ones. That needs
a causal decoder whose past is a KV cache transformers can crop (`DynamicCache`), and a drafter whose logits
evospec_hf can recompute from its decoder's last hidden state (it computes the drafter's LM head itself, over a
shortlist). Everything here is read from the models' classes, configs and modules, without a forward pass, so a
refusal comes before any work and names the architecture (`model_type`) and the reason.

`token_drafter.check_drafter_head` then checks the drafter's head once numerically (one short forward), for what
no inspection sees (a custom `forward` that rescales the logits).
"""

from __future__ import annotations

import inspect

import torch

from ..ops.softcap import logit_transform
from ..utils import decoder_body, unwrap_peft

# architectures whose own decoding protocol speculative decoding cannot follow, with the reason
UNSUPPORTED = {
    "cpmant": "it prepends prompt tokens and re-reads its whole sequence at every step, slicing its cache by "
    "position, so a cache cropped to the accepted tokens no longer lines up",
}
# architectures whose logits are not their LM head over their decoder's last hidden state, which a drafter's
# shortlist head computes (as a target they are fine: the target verifies through its own forward)
UNSUPPORTED_DRAFTERS = {
    "prophetnet": "its logits are its LM head over its first n-gram predicting stream, not over its decoder's last "
    "hidden state, which evospec_hf computes the drafter's head on",
}


def check_supported(target, drafter) -> None:
    """Raises a ValueError naming the architecture and the reason if `target` or `drafter` is one evospec_hf cannot
    run exactly. Reads classes, configs and modules only: no forward pass."""
    for role, model in (("target", target), ("drafter", drafter)):
        reason = unsupported_reason(model, check_head=role == "drafter")
        if reason is not None:
            model = unwrap_peft(model)
            raise ValueError(
                f"evospec_hf cannot use {model.config.model_type} ({type(model).__name__}) as the {role}: {reason}."
            )


def unsupported_reason(model, check_head: bool = True) -> str | None:
    """Why evospec_hf cannot run `model` (None if it can). `check_head`: also whether evospec_hf can recompute its
    logits from its decoder's output (needed of the drafter only: the target verifies through its own forward)."""
    model = unwrap_peft(model)
    config = model.config
    if config.is_encoder_decoder:
        return "it is an encoder-decoder model; evospec_hf needs a decoder-only causal LM"
    if config.model_type in UNSUPPORTED:
        return UNSUPPORTED[config.model_type]
    if getattr(config, "is_decoder", True) is False and _reads_is_decoder(decoder_body(model)):
        return (
            "its config has is_decoder=False, so it attends in both directions and keeps no cache; "
            "load it with is_decoder=True to use it as a causal LM"
        )
    if model._is_stateful:
        return (
            "part of its past is a running state (state-space, linear-attention or compressed layers; transformers "
            "marks it stateful) that cannot be rolled back to the accepted tokens; speculative decoding needs a "
            "decoder whose past is a KV cache (past_key_values)"
        )
    if "past_key_values" not in inspect.signature(type(model).forward).parameters:
        return (
            "its forward takes no past_key_values (no KV cache), so every draft would re-read the whole sequence; "
            "speculative decoding needs a cache-based decoder"
        )
    if not model._supports_default_dynamic_cache():
        return (
            "it keeps its own kind of cache, not transformers' DynamicCache, which speculative decoding crops after "
            "rejected drafts; it needs a cache-based decoder with a standard KV cache"
        )
    head = model.get_output_embeddings()
    rows = getattr(getattr(head, "weight", None), "shape", (None,))[0]
    kept = getattr(config.get_text_config(), "unpadded_vocab_size", None)
    if kept is not None and rows is not None and kept < rows:
        return (
            f"its logits keep only the first {kept} of its LM head's {rows} rows (unpadded_vocab_size), and "
            "evospec_hf verifies and drafts over every row of the head"
        )
    transform = logit_transform(model)
    for name in ("multiplier", "divisor"):
        value = getattr(transform, name, None)
        if value is not None and not value > 0:
            return f"its logit scale ({name} {value}) is not positive, so the best logit is not the head's"
    return _head_reason(model) if check_head else None


def check_cache_use(model, use_cache) -> None:
    """Raises a ValueError naming the architecture if the call runs without a KV cache (`use_cache=False`, given to
    the call or in the model's generation config, as MPT's is by default): speculative decoding needs one. Before
    transformers prepares anything, whose own message ("assisted generate requires `use_cache=True`") says neither
    which model nor why."""
    if use_cache is False:
        model = unwrap_peft(model)
        raise ValueError(
            f"evospec_hf cannot run {model.config.model_type} ({type(model).__name__}) with use_cache=False (its "
            "generation config's value unless the call sets it): speculative decoding verifies the drafts against "
            "the target's KV cache and crops it after rejected drafts. Pass use_cache=True."
        )


def own_generate_refusal(model) -> ValueError:
    """The error for a model whose class has its own `generate` (MusicGen's), which neither reaches evospec_hf's
    wrapper of `GenerationMixin.generate` nor runs transformers' assisted decoding."""
    model = unwrap_peft(model)
    return ValueError(
        f"evospec_hf cannot use {model.config.model_type} ({type(model).__name__}) as the target: its class has its "
        f"own generate() ({type(model).generate.__qualname__}), which does not run transformers' assisted decoding, "
        "where evospec_hf drafts."
    )


def _reads_is_decoder(body) -> bool:
    """Whether the decoder's forward reads `config.is_decoder` (BERT's family: causal attention and a cache only
    with is_decoder=True). GPT-NeoX's config has the field too, but its decoder is causal whatever it says."""
    try:
        return "is_decoder" in inspect.getsource(type(body).forward)
    except (OSError, TypeError):  # no source to read: assume it does not
        return False


def _head_reason(model) -> str | None:
    """Why evospec_hf cannot recompute `model`'s logits as its LM head over its decoder's last hidden state."""
    if model.config.model_type in UNSUPPORTED_DRAFTERS:
        return UNSUPPORTED_DRAFTERS[model.config.model_type]
    head = model.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
        return "it has no linear LM head (`get_output_embeddings()`) whose rows evospec_hf can shortlist"
    # the decoder and the head (or a wrapper holding only the head's weights, as BertGeneration's) hold every weight
    # (a feature drafter's input projections, `evospec_*`, feed the decoder)
    body, own = decoder_body(model), {id(p) for p in head.parameters()}
    extra = [
        name for name, module in model.named_children()
        if module is not body and not name.startswith("evospec_") and any(id(p) not in own for p in module.parameters())
    ]  # fmt: skip
    if extra:
        return (
            f"its logits also depend on weights outside its decoder and LM head ({', '.join(extra)}: e.g. a dense "
            "layer and a norm before the head); evospec_hf computes the drafter's head on the decoder's output itself"
        )
    return None
