"""`EvoSpecSession`: one conversation's adaptation state, kept across `generate` calls.

    session = EvoSpecSession(drafter)
    out = model.generate(**inputs, assistant_model=session.drafter, evospec_config=config, evospec_session=session)
    session.save_adapter("my-adapter")   # on purpose; session.reset() forgets

A session owns a copy of the drafter's LoRA weights. For the length of a `generate` call it puts them into the
drafter and records the target's verification (`evospec_hf.evolve.online`), then takes them back out and restores
the drafter's own weights. So what one session learns from its user's text reaches no other session and no call
without a session, unless it is saved and loaded on purpose. It also keeps the shortlist's statistical index
(n-gram counts of the conversation so far).

When it learns (`OnlineAlignmentConfig.learn`): by default between calls. The call only drafts; when it returns, a
background thread runs the updates the call earned, while the person reads the answer. It takes the drafter only
when no call holds or wants it, gives it back after each update, and abandons an update half-way when a call starts
(`pause_learning`); `stats` counts the updates that ran idle, the ones abandoned, and how long each call waited
(`blocked_ms`). With `learn="in-loop"` the updates run inside the decoding loop instead. Before its updates, the
thread measures the call for the `LearningGovernor` (`evospec_hf.evolve.governor`), which turns learning off when it
does not pay.

Threads (a Space serves several visitors from one process): every `generate` call holds its drafter's
`drafter_lock`. Calls without a session only read the drafter's weights and share it; a call with a session swaps
weights in, so it holds the drafter alone, and so do the session's own methods (`reset`, `save_adapter`,
`load_adapter`, `applied`) and a new session wrapping the drafter. Such calls wait for each other: two threads on
one session, or two sessions on one drafter, take turns, and the drafter's own weights are back after each.
Background learning holds the drafter alone too, one update at a time, and never makes a call wait in line behind it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import threading
import time
import weakref

import torch

from ..models.drafter import feature_layers_of
from ..utils import decoder_body, unwrap_peft
from .governor import CallMeasure, LearningGovernor
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
        self._waiting = 0  # threads waiting for it in any way (a background learner yields to them)

    @contextlib.contextmanager
    def shared(self):
        me = threading.get_ident()
        with self._condition:
            if me not in self._holders:
                self._waiting += 1
                try:
                    while self._exclusive is not None or self._waiting_exclusive:
                        self._condition.wait()
                finally:
                    self._waiting -= 1
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
            self._waiting += 1
            try:
                while self._holders:
                    self._condition.wait()
            finally:
                self._waiting_exclusive -= 1
                self._waiting -= 1
            self._holders[me], self._exclusive = 1, me
        try:
            yield
        finally:
            self._leave(me)

    @contextlib.contextmanager
    def exclusive_if_idle(self):
        """`exclusive` for a background learner: taken only when nobody holds the lock or waits for it (so it never
        makes a call wait in line); yields whether it was taken."""
        me = threading.get_ident()
        with self._condition:
            taken = not self._holders and not self._waiting
            if taken:
                self._holders[me], self._exclusive = 1, me
        try:
            yield taken
        finally:
            if taken:
                self._leave(me)

    def contended(self) -> bool:
        """Whether some thread is waiting for the lock (a call that wants the drafter)."""
        return self._waiting > 0

    def held_by_me(self) -> bool:
        return threading.get_ident() in self._holders

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


_LEARNING: weakref.WeakKeyDictionary[threading.Thread, threading.Event] = weakref.WeakKeyDictionary()


@atexit.register
def _stop_learning_at_exit() -> None:
    """Background learning stops with the interpreter (a daemon thread killed inside a torch op can abort it)."""
    for thread, stop in list(_LEARNING.items()):
        stop.set()
        thread.join(timeout=5)


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
        self._statistical = None
        self._outside: dict | None = None  # the drafter's own weights while the session is attached
        self._owner: int | None = None  # the thread of the generate call it is attached to
        self._aligner: OnlineAligner | None = None  # the current call's; kept after it for learning between calls
        # learning between calls: a background thread, the updates owed to it, and the calls it still has to measure
        self._guard = threading.Lock()
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._blocked = 0.0  # seconds the coming call waited for background learning to yield
        self._forget()

    def _forget(self) -> None:
        """Empties what was learned and measured (the adapter itself is set by the caller)."""
        self.stats = AlignmentStats()
        self._state = AlignerState(self.config)
        self.governor = LearningGovernor(self.config.governor_calls) if self.config.governor else None
        self.calls = 0
        self._owed = 0
        self._to_measure: list = []
        self._call: dict | None = None

    @property
    def learning(self) -> bool:
        """Whether calls teach the adapter: `online`, and the governor has not turned learning off."""
        return self.online and (self.governor is None or self.governor.learning)

    def _with_lora(self, drafter):
        if _lora_parameters(drafter):
            return drafter
        from peft import LoraConfig, get_peft_model

        rank = self.config.lora_rank
        lora = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules="all-linear")
        return get_peft_model(drafter, lora).eval()

    # -- used by the candidate generator, once per generate call ------------------------------------------------
    def pause_learning(self) -> None:
        """Stops background learning now (a call on this session is about to start) and waits for it to let go of
        the drafter: at most the rest of one update's forward pass. The time waited counts as the call's
        `stats.blocked_ms`. What it had not done yet runs after the next call."""
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            started = time.perf_counter()
            self._stop.set()
            if not drafter_lock(self.drafter).held_by_me():  # (else it would wait for this thread's own lock)
                worker.join()
            self._blocked += time.perf_counter() - started
        self._raise_learning_error()

    def wait_learning(self, timeout: float | None = None) -> bool:
        """Waits until the learning owed by past calls is done (it still yields to calls on other threads);
        returns False if `timeout` seconds passed first. For scripts and tests; users need not call it."""
        worker = self._worker
        if worker is not None and drafter_lock(self.drafter).held_by_me():
            raise RuntimeError(
                "wait_learning() cannot run while this thread holds the drafter: it would wait for itself."
            )
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
        self._raise_learning_error()
        return True

    def _raise_learning_error(self) -> None:
        """Re-raises, on the caller's thread, what made the background learning thread fail."""
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("evospec_hf's learning between calls failed") from error

    def attach(self, assistant_model, head_weight, head_bias, softcap, prompt_length: int = 0) -> OnlineAligner | None:
        """Puts the session's adapter into the drafter; returns the aligner that records (and, with `learn="in-loop"`,
        learns) during this call.

        The caller holds `drafter_lock(assistant_model).exclusive()` until `detach` (and has called
        `pause_learning` before taking it)."""
        self.config.validate()  # its fields may have been changed since the session was made
        if self._outside is not None:  # cannot happen while callers hold the drafter's lock exclusively
            raise RuntimeError("This EvoSpecSession is already attached to a generate call.")
        if unwrap_peft(assistant_model) is not unwrap_peft(self.drafter):
            raise ValueError(
                "`evospec_session` was created for another drafter: pass `assistant_model=session.drafter`."
            )
        self.pause_learning()  # (the generate hook did it before taking the lock; this is for other callers)
        self.calls += 1
        blocked, self._blocked = self._blocked, 0.0
        self.stats.blocked_ms.append(round(blocked * 1e3, 2))
        learning = self.learning
        params = _lora_parameters(self.drafter)
        trained = _trained_subset(params, self.config.trainable_layers) if learning else {}
        use_learned = self.governor is None or self.governor.use_learned
        drafting_with = self._weights if use_learned else self._initial
        with torch.no_grad():
            self._outside = {name: p.detach().clone() for name, p in params.items()}
            self._owner = threading.get_ident()
            for name, p in params.items():
                p.copy_(drafting_with[name])
                p.requires_grad_(name in trained)
        self._call = {
            "start": time.perf_counter(), "prompt_length": prompt_length, "blocked": blocked,
            "rounds": self.stats.rounds, "update_ms": len(self.stats.update_ms), "updates": self.stats.updates,
            "weights": {name: t.clone() for name, t in drafting_with.items()} if learning else None,
        }  # fmt: skip
        if not learning:
            self._aligner = None
            return None
        model = unwrap_peft(self.drafter)
        feature_drafter = model if feature_layers_of(model) is not None else None
        anchor = {name: self._initial[name] for name in trained}
        self._aligner = OnlineAligner(
            decoder_body(model), head_weight, head_bias, softcap, trained, self.config, self._state, self.stats,
            feature_drafter=feature_drafter, anchor=anchor,
        )  # fmt: skip
        return self._aligner

    def detach(self) -> None:
        """Takes the session's (possibly improved) adapter back out, restores the drafter's own weights, and leaves
        the learning this call earned (and the governor's measurement of it) to a background thread."""
        if self._outside is None:
            return
        try:
            if self._aligner is not None:
                self._aligner.wait()
        finally:
            params = _lora_parameters(self.drafter)
            with torch.no_grad():
                for name, p in params.items():
                    if self._call is None or self._call["weights"] is not None:  # (it learned with what it drafted)
                        self._weights[name] = p.detach().clone()
                    p.copy_(self._outside[name])
                    p.requires_grad_(False)
            self._outside, self._owner = None, None
        self._plan_between_calls()

    # -- between calls --------------------------------------------------------------------------------------------
    def _plan_between_calls(self) -> None:
        """What the background thread does after this call: measure it for the governor, then the updates it owes."""
        call, aligner, self._call = self._call, self._aligner, None
        if aligner is None or call is None:
            return
        stats, config = self.stats, self.config
        if self.governor is not None and call["updates"] > 0 and getattr(aligner, "last_sequence", None) is not None:
            # drafted with a learned adapter: measure what it bought (the call's own updates are not counted in)
            in_loop = sum(stats.update_ms[call["update_ms"] :]) / 1e3
            rounds = list(zip(stats.drafted_per_round[call["rounds"] :], stats.copied_per_round[call["rounds"] :]))
            drafted = [d for d, copied in rounds if not copied]  # the adapter's own rounds (copies do not change)
            self._to_measure = self._to_measure[-1:] + [{
                "call": self.calls, "weights": call["weights"], "sequence": aligner.last_sequence,
                "features": aligner.last_features, "first": call["prompt_length"],
                "seconds": time.perf_counter() - call["start"], "waited": call["blocked"] + in_loop,
                "drafted": sum(drafted) / max(len(drafted), 1), "drafter_share": len(drafted) / max(len(rounds), 1),
            }]  # fmt: skip
        if config.learn == "between-calls" and len(self._state.replay) >= max(1, config.min_replay):
            earned = self._state.rounds_since_update // config.update_every
            self._state.rounds_since_update %= config.update_every
            if config.updates_per_pause is not None:
                self._owed = config.updates_per_pause
            else:
                self._owed = min(self._owed, earned) + earned  # what a short pause left undone, at most as much again
        with self._guard:
            if self._worker is None and self._work_left():
                self._stop = threading.Event()
                self._worker = threading.Thread(
                    target=self._learn_between_calls, args=(aligner, self._stop), name="evospec-learn", daemon=True
                )
                self._worker.start()
                _LEARNING[self._worker] = self._stop

    def _work_left(self) -> bool:
        return bool(self._to_measure or (self._owed > 0 and self.learning))

    def _learn_between_calls(self, aligner: OnlineAligner, stop: threading.Event) -> None:
        lock = drafter_lock(self.drafter)
        try:
            while not stop.is_set():
                with self._guard:
                    if not self._work_left():
                        self._worker = None
                        return
                with lock.exclusive_if_idle() as taken:
                    if not taken:  # a call uses or wants the drafter: come back when it is free
                        pass
                    elif self._to_measure:
                        self._measure(aligner, self._to_measure.pop(0))
                    else:
                        self._update_between_calls(aligner, lambda: stop.is_set() or lock.contended())
                if not taken:
                    stop.wait(0.02)
        except BaseException as err:  # noqa: BLE001 - re-raised on the next call's thread by `pause_learning`
            self._error = err
        with self._guard:  # stopped (or failed): the next call's `detach` starts a new thread
            if self._worker is threading.current_thread():
                self._worker = None

    def _update_between_calls(self, aligner: OnlineAligner, should_stop) -> None:
        started = time.perf_counter()
        updates = self.stats.updates
        with self._swapped_in(trained=aligner.params):
            done = aligner.update(should_stop)
            if done:
                self._weights = {name: p.detach().clone() for name, p in _lora_parameters(self.drafter).items()}
        if done:
            self._owed -= 1
        if self.stats.updates > updates:
            self.stats.idle_updates += 1
            self.stats.idle_update_ms.append(round((time.perf_counter() - started) * 1e3, 2))

    def _measure(self, aligner: OnlineAligner, call: dict) -> None:
        """The governor's look at one call: its adapter against the starting one, on the call's own output."""
        agreements = []
        for weights in (call["weights"], self._initial):
            with self._swapped_in(weights):
                agreements.append(aligner.agreement(call["sequence"], call["first"], call["features"]))
        measure = CallMeasure(call["seconds"], call["waited"], call["drafted"], *agreements, call["drafter_share"])
        verdict = self.governor.observe(call["call"], measure)
        self.stats.governor.append(verdict.as_dict())
        if not verdict.learning:
            self._owed = 0

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
        """Forgets everything learned: the adapter goes back to the drafter's, statistics are emptied, learning
        owed by past calls is dropped, and the governor starts over."""
        with self._idle("reset"):
            self._weights = {name: t.clone() for name, t in self._initial.items()}
            self._forget()
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
        """Holds the drafter alone for one of the session's own methods (waiting for calls on other threads, and
        pausing learning between calls: `wait_learning()` first to let it finish)."""
        if self._outside is not None and self._owner == threading.get_ident():
            raise RuntimeError(f"EvoSpecSession.{what}() cannot run inside this session's own generate call.")
        self.pause_learning()
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
    def _swapped_in(self, weights: dict | None = None, trained: dict | None = None):
        """`weights` (the session's adapter by default) in the drafter for the block, the `trained` ones requiring
        grad; the drafter's own weights are back afterwards. The caller holds the drafter's lock exclusively."""
        weights = self._weights if weights is None else weights
        params = _lora_parameters(self.drafter)
        saved = {name: p.detach().clone() for name, p in params.items()}
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
