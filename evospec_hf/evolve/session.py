"""`EvoSpecSession`: one conversation's adaptation state, kept across `generate` calls.

    session = EvoSpecSession(drafter)
    out = model.generate(**inputs, assistant_model=session.drafter, evospec_config=config, evospec_session=session)
    session.save_adapter("my-adapter")   # on purpose; session.reset() forgets

A session owns a copy of the drafter's LoRA weights. For the length of a `generate` call it puts them into the
drafter, learns online from the target's verification (`evospec_hf.evolve.online`), then takes them back out and
restores the drafter's own weights. So what one session learns from its user's text reaches no other session and no
call without a session, unless it is saved and loaded on purpose. It also keeps the shortlist's statistical index
(n-gram counts of the conversation so far).
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from ..utils import unwrap_peft
from .online import AlignerState, AlignmentStats, OnlineAligner, OnlineAlignmentConfig


def _lora_parameters(model) -> dict:
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def _trained_subset(params: dict, last_layers: int | None) -> dict:
    """The LoRA parameters of the last `last_layers` decoder layers (all of them when None)."""
    if last_layers is None:
        return params
    layer_of = {name: re.search(r"\.(?:layers|h)\.(\d+)\.", name) for name in params}
    if any(match is None for match in layer_of.values()):
        raise ValueError("`trainable_layers` needs LoRA parameters named by decoder layer (`.layers.N.` or `.h.N.`).")
    layers = {name: int(match.group(1)) for name, match in layer_of.items()}
    first = max(layers.values()) - last_layers + 1
    return {name: p for name, p in params.items() if layers[name] >= first}


class EvoSpecSession:
    """Adaptation state of one conversation.

    Args:
        drafter: the drafter. A peft LoRA model (e.g. `EvoSpecDrafter.from_pretrained(..., merge_adapter=False)`)
            adapts its own adapter. Any other drafter gets a fresh LoRA adapter of rank `config.lora_rank` (all
            linear layers of the decoder, B initialised to zero, so it drafts exactly as before until it learns);
            pass `session.drafter` as `assistant_model` then.
        config: `OnlineAlignmentConfig`; defaults when None.
        online: False keeps the session's statistical index but never trains (the "alignment off" baseline).
    """

    def __init__(self, drafter, config: OnlineAlignmentConfig | None = None, online: bool = True):
        self.config = config if config is not None else OnlineAlignmentConfig()
        self.online = online
        self.drafter = self._with_lora(drafter)
        params = _lora_parameters(self.drafter)
        self._initial = {name: p.detach().clone() for name, p in params.items()}
        self._weights = {name: t.clone() for name, t in self._initial.items()}
        self.stats = AlignmentStats()
        self._state = AlignerState(self.config)
        self._statistical = None
        self._outside: dict | None = None  # the drafter's own weights while the session is attached
        self._aligner: OnlineAligner | None = None

    def _with_lora(self, drafter):
        if _lora_parameters(drafter):
            return drafter
        from peft import LoraConfig, get_peft_model

        rank = self.config.lora_rank
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
        return get_peft_model(drafter, lora).eval()

    # -- used by the candidate generator, once per generate call ------------------------------------------------
    def attach(self, assistant_model, head_weight, head_bias, softcap) -> OnlineAligner | None:
        """Puts the session's adapter into the drafter; returns the aligner that learns during this call."""
        if self._outside is not None:
            raise RuntimeError("This EvoSpecSession is already in use by another generate call.")
        if unwrap_peft(assistant_model) is not unwrap_peft(self.drafter):
            raise ValueError(
                "`evospec_session` was created for another drafter: pass `assistant_model=session.drafter`."
            )
        params = _lora_parameters(self.drafter)
        trained = _trained_subset(params, self.config.trainable_layers) if self.online else {}
        with torch.no_grad():
            self._outside = {name: p.detach().clone() for name, p in params.items()}
            for name, p in params.items():
                p.copy_(self._weights[name])
                p.requires_grad_(name in trained)
        if not self.online:
            return None
        body = unwrap_peft(self.drafter).base_model
        self._aligner = OnlineAligner(body, head_weight, head_bias, softcap, trained, self.config, self._state, self.stats)
        return self._aligner

    def detach(self) -> None:
        """Takes the session's (possibly improved) adapter back out and restores the drafter's own weights."""
        if self._outside is None:
            return
        try:
            if self._aligner is not None:
                self._aligner.wait()
        finally:
            params = _lora_parameters(self.drafter)
            with torch.no_grad():
                for name, p in params.items():
                    self._weights[name] = p.detach().clone()
                    p.copy_(self._outside[name])
                    p.requires_grad_(False)
            self._outside, self._aligner = None, None

    def statistical_index(self, order: int):
        """The session's n-gram index of the conversation's tokens (kept across calls, emptied by `reset`)."""
        from ..vocab.indexes import NGramIndex

        if self._statistical is None or self._statistical.order != order:
            self._statistical = NGramIndex(order)
        return self._statistical

    # -- user API ---------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets everything learned: the adapter goes back to the drafter's, and statistics are emptied."""
        self._check_idle("reset")
        self._weights = {name: t.clone() for name, t in self._initial.items()}
        self._state = AlignerState(self.config)
        self.stats = AlignmentStats()
        self._statistical = None

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """Writes the session's adapter as a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`)."""
        self._check_idle("save_adapter")
        with self.applied():
            self.drafter.save_pretrained(os.fspath(save_directory))

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Replaces the session's adapter with one saved by `save_adapter` (from this drafter's architecture)."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        self._check_idle("load_adapter")
        weights = load_peft_weights(os.fspath(directory), device="cpu")
        with self.applied():
            result = set_peft_model_state_dict(self.drafter, weights)
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise ValueError(
                    f"{directory} does not fit this drafter's adapter (missing {missing[:3]}, unexpected "
                    f"{list(getattr(result, 'unexpected_keys', []))[:3]})."
                )
            self._weights = {name: p.detach().clone() for name, p in _lora_parameters(self.drafter).items()}

    def _check_idle(self, what: str) -> None:
        if self._outside is not None:
            raise RuntimeError(f"EvoSpecSession.{what}() cannot run during a generate call.")

    @contextlib.contextmanager
    def applied(self):
        """The session's adapter in the drafter for the block, e.g. to evaluate it: `with session.applied(): ...`."""
        self._check_idle("applied")
        params = _lora_parameters(self.drafter)
        saved = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self._weights[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])
