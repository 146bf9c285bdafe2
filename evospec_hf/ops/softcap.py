"""What an architecture does to its LM head's output before it returns the logits (Gemma 2/3's final-logit softcap,
Cohere's and Granite's logit scales): the one place evospec_hf applies it, for drafting, checks and losses."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..utils import unwrap_peft

# architectures that scale their head's output, and how their forward does it: (where the number is, the operation).
# The same config name means different things: Granite divides its logits by `logits_scaling`, HyperCLOVA X
# multiplies them, MiniCPM3 divides the hidden state before the head (the same up to rounding, which drafts may
# have: the target verifies them); so does Inkling, by `logits_mup_width_multiplier`.
LOGIT_SCALES = {
    "cohere": ("model.logit_scale", "multiply"),
    "cohere2": ("model.logit_scale", "multiply"),
    "cohere2_moe": ("model.logit_scale", "multiply"),
    "cohere_compass": ("model.logit_scale", "multiply"),
    "granite": ("config.logits_scaling", "divide"),
    "granite_swa": ("config.logits_scaling", "divide"),
    "granitemoe": ("config.logits_scaling", "divide"),
    "granitemoe_swa": ("config.logits_scaling", "divide"),
    "granitemoeshared": ("config.logits_scaling", "divide"),
    "granitemoehybrid": ("config.logits_scaling", "divide"),
    "hyperclovax": ("config.logits_scaling", "multiply"),
    "inkling_text": ("config.logits_mup_width_multiplier", "divide"),
    "minicpm3": ("config.logits_scaling", "divide"),
}


@dataclass(frozen=True)
class LogitTransform:
    """`logits -> softcap(logits * multiplier / divisor, cap)`, each step only when set, in the order and with the
    operations of the model's own forward (so the same floats come out)."""

    multiplier: float | None = None
    divisor: float | None = None
    cap: float | None = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.multiplier is not None:
            logits = logits * self.multiplier
        if self.divisor is not None:
            logits = logits / self.divisor
        if self.cap is not None:
            logits = torch.tanh(logits / self.cap) * self.cap
        return logits


def softcap(logits: torch.Tensor, cap: float | LogitTransform | None) -> torch.Tensor:
    """`logits` through a model's `LogitTransform`, or `tanh(logits / cap) * cap` for a plain softcap `cap`, or
    `logits` unchanged when `cap` is None."""
    if cap is None:
        return logits
    if isinstance(cap, LogitTransform):
        return cap(logits)
    return torch.tanh(logits / cap) * cap


def logit_transform(model) -> LogitTransform | None:
    """What `model`'s architecture applies to its LM head's output (`LOGIT_SCALES`, and the final-logit softcap
    `config.final_logit_softcapping`), or None when its logits are the head's output as they are."""
    config = model.config.get_text_config()
    cap = getattr(config, "final_logit_softcapping", None)
    multiplier = divisor = None
    where, operation = LOGIT_SCALES.get(config.model_type, (None, None))
    if where is not None:
        owner, name = where.split(".")
        value = getattr(unwrap_peft(model) if owner == "model" else config, name, None)
        value = None if value is None else float(value)
        multiplier, divisor = (value, None) if operation == "multiply" else (None, value)
    if multiplier is None and divisor is None and cap is None:
        return None
    return LogitTransform(multiplier, divisor, cap)
