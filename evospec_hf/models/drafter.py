"""Drafters built from their target: the target's first layers, its final norm and its LM head.

No pretrained drafter shares Gemma-3's or SmolLM2's tokenizer offline, so evospec_hf makes one from the target
and distils it (`scripts/distill_drafter.py`). The input embedding and the LM head are the target's own modules,
shared rather than copied: at |V| = 262,144 x 640 each copy would cost 670 MB, and the drafter never trains them.
"""

from __future__ import annotations

import copy

import torch

from ..utils import unwrap_peft

# the drafter's config attribute that records `target_architecture(target)`: what it was built from, which
# `EvoSpecDrafter.save_pretrained` writes into a checkpoint and `from_pretrained` checks against the target given
TARGET_ARCHITECTURE_ATTR = "evospec_target_architecture"


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


def drafter_from_target(target, num_layers: int):
    """A causal LM of the target's class with its first `num_layers` decoder layers (copied).

    Embeddings and LM head are shared with `target`: do not train them through the drafter. The drafter's config
    records the target's architecture (`config.evospec_target_architecture`) for its checkpoint.
    """
    architecture = target_architecture(target)
    config = copy.deepcopy(target.config)
    text_config = config.get_text_config()
    total = text_config.num_hidden_layers
    if not 1 <= num_layers < total:
        raise ValueError(f"num_layers must be in [1, {total - 1}] for a {total}-layer target, got {num_layers}")
    text_config.num_hidden_layers = num_layers
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = text_config.layer_types[:num_layers]
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
    copied = {k: v.detach().clone() for k, v in target.state_dict().items() if k in own and k not in shared}
    missing = set(own) - set(copied) - shared
    if missing:
        raise ValueError(f"could not initialise the drafter's {sorted(missing)[:5]} from the target")
    drafter.load_state_dict(copied, strict=False)
    drafter.generation_config = copy.deepcopy(target.generation_config)
    return drafter.to(target.dtype).eval()


def _shared_names(model) -> set[str]:
    """State-dict names whose tensors are the (shared) input embedding or LM head, tied aliases included."""
    modules = (model.get_input_embeddings(), model.get_output_embeddings())
    pointers = {p.data_ptr() for module in modules for p in module.parameters()}
    return {k for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and v.data_ptr() in pointers}
