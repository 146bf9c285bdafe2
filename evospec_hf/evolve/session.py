"""`EvoSpecSession`: one conversation's adaptation state, kept across `generate` calls.

    session = EvoSpecSession(drafter)
    out = model.generate(**inputs, assistant_model=session.drafter, evospec_config=config, evospec_session=session)
    session.save_adapter("my-adapter")   # on purpose; session.reset() forgets

A session owns a copy of the drafter's LoRA weights. For the length of a `generate` call it puts them into the
drafter, learns online from the target's verification (`evospec_hf.evolve.online`), then takes them back out and
restores the drafter's own weights. So what one session learns from its user's text reaches no other session and no
call without a session, unless it is saved and loaded on purpose. It also keeps the shortlist's statistical index
(n-gram counts of the conversation so far).

Threads (a Space serves several visitors from one process): every `generate` call holds its drafter's
`drafter_lock`. Calls without a session only read the drafter's weights and share it; a call with a session swaps
weights in, so it holds the drafter alone, and so do the session's own methods (`reset`, `save_adapter`,
`load_adapter`, `applied`) and a new session wrapping the drafter. Such calls wait for each other: two threads on
one session, or two sessions on one drafter, take turns, and the drafter's own weights are back after each.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import weakref

import torch

from ..models.drafter import feature_layers_of
from ..utils import unwrap_peft
from .online import AlignerState, AlignmentStats, OnlineAligner, OnlineAlignmentConfig


class DrafterLock:
    """Who uses a drafter's weights: any number of calls that only read them (`shared`), or one that changes them
    (`exclusive`: a session's call, or a session's own method). Waiting exclusive users go before new readers.

    A thread that holds the lock may open `shared` again (e.g. to generate inside `session.applied()`); asking for
    `exclusive` while holding it in any way would wait for itself, so it raises instead.
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._holders: dict[int, int] = {}  # thread id -> blocks it holds
        self._exclusive: int | None = None  # the thread holding it exclusively
        self._waiting_exclusive = 0

    @contextlib.contextmanager
    def shared(self):
        me = threading.get_ident()
        with self._condition:
            if me not in self._holders:
                while self._exclusive is not None or self._waiting_exclusive:
                    self._condition.wait()
            self._holders[me] = self._holders.get(me, 0) + 1
        try:
            yield
        finally:
            self._leave(me)

    @contextlib.contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._condition:
            if me in self._holders:
                raise RuntimeError(
                    "this thread is already using the drafter (e.g. a generate call with a session inside another "
                    "call or inside `session.applied()`); a session swaps the drafter's weights and would wait for "
                    "itself."
                )
            self._waiting_exclusive += 1
            try:
                while self._holders:
                    self._condition.wait()
            finally:
                self._waiting_exclusive -= 1
            self._holders[me], self._exclusive = 1, me
        try:
            yield
        finally:
            self._leave(me)

    def _leave(self, me: int) -> None:
        with self._condition:
            self._holders[me] -= 1
            if self._holders[me] == 0:
                del self._holders[me]
                if self._exclusive == me:
                    self._exclusive = None
            self._condition.notify_all()


_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, DrafterLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def drafter_lock(drafter) -> DrafterLock:
    """The `DrafterLock` of a drafter (the same for its peft wrapper and the model beneath)."""
    model = unwrap_peft(drafter)
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = DrafterLock()
        return lock


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
        if config is not None and not isinstance(config, OnlineAlignmentConfig):
            raise TypeError(f"`config` must be an OnlineAlignmentConfig (or None), got {type(config).__name__}.")
        self.config = config if config is not None else OnlineAlignmentConfig()
        self.online = online
        with drafter_lock(drafter).exclusive():  # wrapping changes the drafter's modules; read its own weights
            self.drafter = self._with_lora(drafter)
            params = _lora_parameters(self.drafter)
            self._initial = {name: p.detach().clone() for name, p in params.items()}
        self._weights = {name: t.clone() for name, t in self._initial.items()}
        self.stats = AlignmentStats()
        self._state = AlignerState(self.config)
        self._statistical = None
        self._outside: dict | None = None  # the drafter's own weights while the session is attached
        self._owner: int | None = None  # the thread of the generate call it is attached to
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
        """Puts the session's adapter into the drafter; returns the aligner that learns during this call.

        The caller holds `drafter_lock(assistant_model).exclusive()` until `detach`."""
        self.config.validate()  # its fields may have been changed since the session was made
        if self._outside is not None:  # cannot happen while callers hold the drafter's lock exclusively
            raise RuntimeError("This EvoSpecSession is already attached to a generate call.")
        if unwrap_peft(assistant_model) is not unwrap_peft(self.drafter):
            raise ValueError(
                "`evospec_session` was created for another drafter: pass `assistant_model=session.drafter`."
            )
        params = _lora_parameters(self.drafter)
        trained = _trained_subset(params, self.config.trainable_layers) if self.online else {}
        with torch.no_grad():
            self._outside = {name: p.detach().clone() for name, p in params.items()}
            self._owner = threading.get_ident()
            for name, p in params.items():
                p.copy_(self._weights[name])
                p.requires_grad_(name in trained)
        if not self.online:
            return None
        model = unwrap_peft(self.drafter)
        feature_drafter = model if feature_layers_of(model) is not None else None
        self._aligner = OnlineAligner(
            model.base_model, head_weight, head_bias, softcap, trained, self.config, self._state, self.stats,
            feature_drafter=feature_drafter,
        )  # fmt: skip
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
            self._outside, self._aligner, self._owner = None, None, None

    def statistical_index(self, order: int):
        """The session's n-gram index of the conversation's tokens (kept across calls, emptied by `reset`)."""
        from ..vocab.indexes import NGramIndex

        if self._statistical is None or self._statistical.order != order:
            self._statistical = NGramIndex(order)
        return self._statistical

    def frequency_table(self, vocab_size: int):
        """The tokens of this session's conversation so far, by count (`FrequencyTable`; empty before any call with
        `shortlist="evospec"`, whose statistical index does the counting). `FrequencyTable.save_token_map(path, size,
        fill=<the drafter's static table>)` writes it for a serving engine."""
        from ..vocab.frequency import FrequencyTable

        counts = torch.zeros(vocab_size, dtype=torch.long)
        unigrams = self._statistical.counts.get((), {}) if self._statistical is not None else {}
        for token, count in unigrams.items():
            counts[token] = count
        return FrequencyTable.from_counts(counts, source="EvoSpecSession: the conversation's tokens")

    # -- user API ---------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets everything learned: the adapter goes back to the drafter's, and statistics are emptied."""
        with self._idle("reset"):
            self._weights = {name: t.clone() for name, t in self._initial.items()}
            self._state = AlignerState(self.config)
            self.stats = AlignmentStats()
            self._statistical = None

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """Writes the session's adapter as a peft adapter folder (`adapter_config.json`, `adapter_model.safetensors`)."""
        with self._idle("save_adapter"), self._swapped_in():
            self.drafter.save_pretrained(os.fspath(save_directory))

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Replaces the session's adapter with one saved by `save_adapter` (from this drafter's architecture)."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        weights = load_peft_weights(os.fspath(directory), device="cpu")
        with self._idle("load_adapter"), self._swapped_in():
            result = set_peft_model_state_dict(self.drafter, weights)
            missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
            if missing or getattr(result, "unexpected_keys", []):
                raise ValueError(
                    f"{directory} does not fit this drafter's adapter (missing {missing[:3]}, unexpected "
                    f"{list(getattr(result, 'unexpected_keys', []))[:3]})."
                )
            self._weights = {name: p.detach().clone() for name, p in _lora_parameters(self.drafter).items()}

    @contextlib.contextmanager
    def _idle(self, what: str):
        """Holds the drafter alone for one of the session's own methods (waiting for calls on other threads)."""
        if self._outside is not None and self._owner == threading.get_ident():
            raise RuntimeError(f"EvoSpecSession.{what}() cannot run inside this session's own generate call.")
        with drafter_lock(self.drafter).exclusive():
            yield

    @contextlib.contextmanager
    def applied(self):
        """The session's adapter in the drafter for the block, e.g. to evaluate it: `with session.applied(): ...`.

        The block holds the drafter: calls on it from other threads wait until it ends. `generate` without a
        session may run inside the block on the same thread (it drafts with the session's adapter)."""
        with self._idle("applied"), self._swapped_in():
            yield

    @contextlib.contextmanager
    def _swapped_in(self):
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
