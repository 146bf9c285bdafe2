"""Drafters built from their target: a few of the target's decoder layers, its final norm and its LM head.

No pretrained drafter shares Gemma-3's or SmolLM2's tokenizer offline, so evospec_hf makes one from the target
and distils it (`evospec-hf distill`). The input embedding and the LM head are the target's own modules,
shared rather than copied: at |V| = 262,144 x 640 each copy would cost 670 MB, and the drafter never trains them.

Two kinds:

- a token drafter (`drafter_from_target`): the target's first layers, reading tokens as the target does;
- a feature drafter (`feature_drafter_from_target`, EAGLE-style): the target's last layer(s), reading at each
  position the target's own hidden state(s) there together with the next token's embedding. The target computes
  those hidden states anyway while it verifies, so the drafter starts from what the target already knows. Within a
  round, where the target has not run yet, it reads its own predicted hidden states instead.
"""

from __future__ import annotations

import copy
import re

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import unwrap_peft

# the drafter's config attribute that records `target_architecture(target)`: what it was built from, which
# `EvoSpecDrafter.save_pretrained` writes into a checkpoint and `from_pretrained` checks against the target given
TARGET_ARCHITECTURE_ATTR = "evospec_target_architecture"
# the config attribute that makes a drafter a feature drafter: which of the target's hidden states it reads
# (indices into `output_hidden_states`: -1 is the last, after the final norm)
FEATURE_LAYERS_ATTR = "evospec_feature_layers"
# config lists with one entry per decoder layer, and lists of decoder-layer indices (Llama 4's MoE layers)
PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "mlp_layer_types")
LAYER_INDEX_LISTS = ("moe_layers",)


def target_architecture(model) -> dict:
    """What identifies a target's architecture: its model class, `model_type`, hidden size and number of decoder
    layers (the vocabulary size is recorded and checked on its own)."""
    model = unwrap_peft(model)
    text_config = model.config.get_text_config()
    return {
        "model_class": type(model).__name__,
        "model_type": text_config.model_type,
        "hidden_size": text_config.hidden_size,
        "num_hidden_layers": text_config.num_hidden_layers,
    }


def drafter_from_target(target, num_layers: int, last: bool = False):
    """A causal LM of the target's class with its first (or, with `last`, its last) `num_layers` decoder layers
    (copied).

    Embeddings and LM head are shared with `target`: do not train them through the drafter. The drafter's config
    records the target's architecture (`config.evospec_target_architecture`) for its checkpoint.
    """
    architecture = target_architecture(target)
    config = copy.deepcopy(target.config)
    text_config = config.get_text_config()
    total = text_config.num_hidden_layers
    if not 1 <= num_layers < total:
        raise ValueError(f"num_layers must be in [1, {total - 1}] for a {total}-layer target, got {num_layers}")
    first = total - num_layers if last else 0  # the target's index of the drafter's layer 0
    text_config.num_hidden_layers = num_layers
    for name in PER_LAYER_LISTS:  # the drafter's layers keep the settings they had in the target
        if getattr(text_config, name, None) is not None:
            setattr(text_config, name, getattr(text_config, name)[first : first + num_layers])
    for name in LAYER_INDEX_LISTS:
        if getattr(text_config, name, None) is not None:
            kept = [i - first for i in getattr(text_config, name) if first <= i < first + num_layers]
            setattr(text_config, name, kept)
    vocab_size = text_config.vocab_size
    # built with a tiny vocabulary (room for the padding index only), then given the target's embedding modules
    text_config.vocab_size = (getattr(text_config, "pad_token_id", None) or 0) + 1
    drafter = type(target)(config)
    drafter.set_input_embeddings(target.get_input_embeddings())
    drafter.set_output_embeddings(target.get_output_embeddings())
    text_config.vocab_size = vocab_size
    setattr(drafter.config, TARGET_ARCHITECTURE_ATTR, architecture)

    own = drafter.state_dict()
    shared = _shared_names(drafter)
    copied = {}
    for name, value in target.state_dict().items():
        name = _shift_layer(name, -first)
        if name is not None and name in own and name not in shared:
            copied[name] = value.detach().clone()
    missing = set(own) - set(copied) - shared
    if missing:
        raise ValueError(f"could not initialise the drafter's {sorted(missing)[:5]} from the target")
    drafter.load_state_dict(copied, strict=False)
    drafter.generation_config = copy.deepcopy(target.generation_config)
    return drafter.to(target.dtype).eval()


def feature_drafter_from_target(target, num_layers: int = 1, feature_layers=(-1,)):
    """An EAGLE-style feature drafter: the target's last `num_layers` decoder layers, fed at each position with
    `combine([embedding of the next token, fuse(the target's hidden states at feature_layers)])`.

    Args:
        target: the target model.
        num_layers: decoder layers of the drafter, copied from the target's last ones.
        feature_layers: which of the target's hidden states it reads, as indices into `output_hidden_states`
            (-1: the last, after the final norm, what the LM head reads; EAGLE-3 fuses a low, a middle and a high
            one).

    The two input projections are new modules of the returned model (`evospec_fuse`: the concatenated features to
    one hidden state; `evospec_combine`: the embedding and that hidden state, each at unit RMS, to the decoder
    layer's input). They start as "the last listed feature plus the embedding"; distillation trains them with the
    layers. `feature_inputs` runs them.
    """
    text_config = target.config.get_text_config()
    total, hidden = text_config.num_hidden_layers, text_config.hidden_size
    feature_layers = [int(i) for i in feature_layers]
    if not feature_layers or any(not -(total + 1) <= i <= total for i in feature_layers):
        raise ValueError(
            f"feature_layers must be indices into the target's {total + 1} hidden states, got {feature_layers}"
        )
    drafter = drafter_from_target(target, num_layers, last=True)
    drafter.evospec_fuse = nn.Linear(len(feature_layers) * hidden, hidden, bias=False)
    drafter.evospec_combine = nn.Linear(2 * hidden, hidden, bias=False)
    with torch.no_grad():
        drafter.evospec_fuse.weight.zero_()
        drafter.evospec_fuse.weight[:, -hidden:] = torch.eye(hidden)
        drafter.evospec_combine.weight.zero_()
        drafter.evospec_combine.weight[:, :hidden] = torch.eye(hidden)
        drafter.evospec_combine.weight[:, hidden:] = torch.eye(hidden)
    setattr(drafter.config, FEATURE_LAYERS_ATTR, feature_layers)
    return drafter.to(target.dtype).eval()


def feature_layers_of(drafter) -> list[int] | None:
    """The target hidden states a feature drafter reads, or None for a token drafter."""
    return getattr(unwrap_peft(drafter).config, FEATURE_LAYERS_ATTR, None)


def feature_inputs(drafter, token_ids: torch.Tensor, features: torch.Tensor | None = None, own=None):
    """A feature drafter's decoder input at each position: the next token's embedding with a hidden state.

    Args:
        token_ids: `(B, T)` the token after each position.
        features: `(B, T, len(feature_layers) * hidden)` the target's hidden states at the positions, or
        own: `(B, T, hidden)` the drafter's own predicted hidden states there (within a round).

    Returns:
        `(B, T, hidden)` `inputs_embeds` for the drafter's decoder body.
    """
    model = unwrap_peft(drafter)
    embeds = model.get_input_embeddings()(token_ids)
    guide = model.evospec_fuse(features.to(embeds.dtype)) if features is not None else own.to(embeds.dtype)
    # each half at unit RMS (as EAGLE-3 normalises both inputs): a hidden state's scale can be 100x the
    # embedding's, which would leave the token invisible to the decoder layer
    size = (embeds.shape[-1],)
    return model.evospec_combine(torch.cat([F.rms_norm(embeds, size), F.rms_norm(guide, size)], dim=-1))


def shifted_feature_inputs(drafter, token_ids: torch.Tensor, features=None, own=None, step: int = 0):
    """`feature_inputs` over a sequence, paired here and nowhere else: the hidden state at position `j` with the
    token at `j + 1 + step`, for every `j` that has one.

    Args:
        token_ids: `(B, T)` the sequence's tokens.
        features: `(B, >= T - 1, ...)` the target's hidden states at its positions (drafting's first step), or
        own: `(B, >= T - 1 - step, hidden)` the drafter's own predictions from step `step - 1` (later steps).
        step: the draft step within a round (0: the target's states).

    Returns:
        `(B, T - 1 - step, hidden)` `inputs_embeds` for the drafter's decoder body.
    """
    n = token_ids.shape[1] - 1 - step
    tokens = token_ids[:, 1 + step :]
    if features is not None:
        return feature_inputs(drafter, tokens, features=features[:, :n])
    return feature_inputs(drafter, tokens, own=own[:, :n])


def _shift_layer(name: str, offset: int) -> str | None:
    """A state-dict name with its decoder-layer index moved by `offset` (None when that falls below layer 0)."""
    match = re.search(r"\.(layers|h)\.(\d+)\.", name)
    if match is None or offset == 0:
        return name
    index = int(match.group(2)) + offset
    if index < 0:
        return None
    return f"{name[: match.start(2)]}{index}{name[match.end(2):]}"


def _shared_names(model) -> set[str]:
    """State-dict names whose tensors are the (shared) input embedding or LM head, tied aliases included."""
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    pointers = {p.data_ptr() for module in modules for p in module.parameters()}
    return {k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and v.data_ptr() in pointers}
