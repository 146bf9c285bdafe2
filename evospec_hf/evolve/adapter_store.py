"""`AdapterStore`: a session's copy of the drafter's LoRA weights, and how they go into the drafter and back out.

A session's adapter lives here, not in the drafter. `put_in` copies it (or the starting adapter) into the drafter's
LoRA parameters for the length of a `generate` call, and `take_out` gives the drafter its own weights back,
keeping what the call learned; `swapped_in` does both around a block. `save` writes the adapter as a peft adapter
folder and `load` reads one back. Each of them changes the drafter's weights: the caller holds
`drafter_lock(drafter).exclusive()`.
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

from ..utils import peft_wrapping


def lora_parameters(model) -> dict:
    """The LoRA parameters of a peft model, by name."""
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def trained_subset(params: dict, last_layers: int | None) -> dict:
    """The LoRA parameters of the last `last_layers` decoder layers (all of them when None)."""
    if last_layers is None:
        return params
    layer_of = {name: re.search(r"\.(?:layers|h)\.(\d+)\.", name) for name in params}
    if any(match is None for match in layer_of.values()):
        raise ValueError("`trainable_layers` needs LoRA parameters named by decoder layer (`.layers.N.` or `.h.N.`).")
    layers = {name: int(match.group(1)) for name, match in layer_of.items()}
    first = max(layers.values()) - last_layers + 1
    return {name: p for name, p in params.items() if layers[name] >= first}


def with_lora(drafter, rank: int):
    """The drafter itself if it has LoRA parameters; else the drafter with a fresh LoRA adapter of rank `rank` on
    every linear layer of its decoder (B initialised to zero, so it drafts exactly as before until it learns)."""
    if lora_parameters(drafter):
        return drafter
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
    with peft_wrapping():  # peft reads a deprecated transformers attribute: not the user's business
        return get_peft_model(drafter, lora).eval()


def read_adapter(directory: str | os.PathLike) -> dict:
    """The weights of a peft adapter folder (written by `AdapterStore.save`), on the CPU."""
    from peft.utils import load_peft_weights

    return load_peft_weights(os.fspath(directory), device="cpu")


def _clone(weights: dict) -> dict:
    return {name: t.detach().clone() for name, t in weights.items()}


class AdapterStore:
    """The adapter of one session, for a peft `drafter` (see `with_lora`).

    Attributes:
        initial: the drafter's LoRA weights when the store was made (the starting, "shipped" adapter).
        weights: the session's adapter: `initial` until something is learned or loaded.
    """

    def __init__(self, drafter):
        self.drafter = drafter
        self.initial = self.snapshot()
        self.weights = _clone(self.initial)
        self._outside: dict | None = None  # the drafter's own weights between `put_in` and `take_out`

    def snapshot(self) -> dict:
        """A copy of the LoRA weights now in the drafter."""
        return _clone(lora_parameters(self.drafter))

    def keep(self) -> None:
        """The weights now in the drafter become the session's adapter."""
        self.weights = self.snapshot()

    def reset(self) -> None:
        """The session's adapter goes back to `initial`."""
        self.weights = _clone(self.initial)

    @property
    def is_in(self) -> bool:
        """Whether `put_in` put weights into the drafter that `take_out` has not taken out yet."""
        return self._outside is not None

    def put_in(self, weights: dict, trained: dict | None = None) -> None:
        """`weights` into the drafter until `take_out`, the `trained` ones (by name) requiring grad and the others
        not; the drafter's own weights are kept aside."""
        if self._outside is not None:
            raise RuntimeError("The session's adapter is already in the drafter.")
        params = lora_parameters(self.drafter)
        with torch.no_grad():
            self._outside = _clone(params)
            for name, p in params.items():
                p.copy_(weights[name])
                p.requires_grad_(name in (trained or {}))

    def take_out(self, keep: bool) -> None:
        """Gives the drafter its own weights back (nothing requiring grad); with `keep`, the weights that were in
        it become the session's adapter first. Does nothing after `take_out`."""
        if self._outside is None:
            return
        params = lora_parameters(self.drafter)
        with torch.no_grad():
            for name, p in params.items():
                if keep:
                    self.weights[name] = p.detach().clone()
                p.copy_(self._outside[name])
                p.requires_grad_(False)
        self._outside = None

    @contextlib.contextmanager
    def swapped_in(self, weights: dict | None = None, trained: dict | None = None):
        """`weights` (the session's adapter by default) in the drafter for the block, the `trained` ones requiring
        grad; the drafter's own weights are back afterwards, none requiring grad."""
        weights = self.weights if weights is None else weights
        params = lora_parameters(self.drafter)
        saved = _clone(params)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
        for name in trained or {}:
            params[name].requires_grad_(True)
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved[name])
                    p.requires_grad_(False)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the session's adapter as a peft adapter folder (`adapter_config.json`,
        `adapter_model.safetensors`)."""
        with self.swapped_in():
            self.drafter.save_pretrained(os.fspath(directory))

    def load(self, weights: dict, directory: str | os.PathLike) -> None:
        """Makes `weights` (from `read_adapter(directory)`) the session's adapter; a ValueError if they do not fit
        this drafter's adapter."""
        from peft import set_peft_model_state_dict

        with self.swapped_in():
            result = set_peft_model_state_dict(self.drafter, weights)
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise ValueError(
                    f"{directory} does not fit this drafter's adapter (missing {missing[:3]}, unexpected "
                    f"{list(getattr(result, 'unexpected_keys', []))[:3]})."
                )
            self.keep()
