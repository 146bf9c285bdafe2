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

Threads: every `generate` call holds its drafter's `drafter_lock` (`evospec_hf.locks`); a call with a session, the
session's own methods and a new session wrapping the drafter hold it alone, so they take turns.

The session is the facade over its parts, each in its own module: the adapter (`adapter_store.AdapterStore`), the
background thread (`learner.BackgroundLearner`), the online learner of a call (`online.OnlineAligner`), the
governor (`governor.LearningGovernor`) and the serving export (`export.conversation_table`). What stays here is what
ties them together: which adapter a call drafts with, what a call owes to the thread, and the conversation's n-gram
index (`vocab.indexes.NGramIndex`, which `shortlist="evospec"` retrieves from).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

from ..locks import DrafterLock, drafter_lock  # noqa: F401 - `DrafterLock` importable from here as before
from ..models.drafter import feature_layers_of
from ..utils import decoder_body, unwrap_peft
from ..vocab.indexes import NGramIndex
from .adapter_store import AdapterStore, lora_parameters, read_adapter, trained_subset, with_lora
from .export import conversation_table
from .governor import CallMeasure, LearningGovernor
from .learner import BackgroundLearner
from .online import AlignerState, AlignmentStats, OnlineAligner, OnlineAlignmentConfig


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
            self.drafter = with_lora(drafter, self.config.lora_rank)
            self._store = AdapterStore(self.drafter)
        self._statistical: NGramIndex | None = None
        self._owner: int | None = None  # the thread of the generate call it is attached to
        self._aligner: OnlineAligner | None = None  # the current call's; kept after it for learning between calls
        self._learner = BackgroundLearner(drafter_lock(self.drafter), self._next_job)
        self._blocked = 0.0  # seconds the coming call waited for background learning to yield
        self._forget()

    def _forget(self) -> None:
        """Empties what was learned and measured (the adapter itself is set by the caller)."""
        self.stats = AlignmentStats()
        self._state = AlignerState(self.config)
        self.governor = LearningGovernor(self.config.governor_calls) if self.config.governor else None
        self.calls = 0
        self._owed = 0  # updates owed to the background thread
        self._to_measure: list = []  # calls the background thread still has to measure for the governor
        self._call: dict | None = None

    @property
    def learning(self) -> bool:
        """Whether calls teach the adapter: `online`, and the governor has not turned learning off."""
        return self.online and (self.governor is None or self.governor.learning)

    # the parts' state under the names it had before they were split out (tests read them)
    @property
    def _weights(self) -> dict:
        return self._store.weights

    @property
    def _initial(self) -> dict:
        return self._store.initial

    @property
    def _outside(self) -> dict | None:
        return self._store._outside

    @property
    def _worker(self) -> threading.Thread | None:
        return self._learner.thread

    # -- used by the candidate generator, once per generate call ------------------------------------------------
    def pause_learning(self) -> None:
        """Stops background learning now (a call on this session is about to start) and waits for it to let go of
        the drafter: at most the rest of one update's forward pass. The time waited counts as the call's
        `stats.blocked_ms`. What it had not done yet runs after the next call."""
        self._blocked += self._learner.pause()
        self._learner.raise_error()

    def wait_learning(self, timeout: float | None = None) -> bool:
        """Waits until the learning owed by past calls is done (it still yields to calls on other threads);
        returns False if `timeout` seconds passed first. For scripts and tests; users need not call it."""
        if not self._learner.wait(timeout):
            return False
        self._learner.raise_error()
        return True

    def attach(self, assistant_model, head_weight, head_bias, softcap, prompt_length: int = 0) -> OnlineAligner | None:
        """Puts the session's adapter into the drafter; returns the aligner that records (and, with `learn="in-loop"`,
        learns) during this call.

        The caller holds `drafter_lock(assistant_model).exclusive()` until `detach` (and has called
        `pause_learning` before taking it)."""
        self.config.validate()  # its fields may have been changed since the session was made
        if self._store.is_in:  # cannot happen while callers hold the drafter's lock exclusively
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
        params = lora_parameters(self.drafter)
        trained = trained_subset(params, self.config.trainable_layers) if learning else {}
        use_learned = self.governor is None or self.governor.use_learned
        drafting_with = self._store.weights if use_learned else self._store.initial
        self._store.put_in(drafting_with, trained)
        self._owner = threading.get_ident()
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
        anchor = {name: self._store.initial[name] for name in trained}
        self._aligner = OnlineAligner(
            decoder_body(model), head_weight, head_bias, softcap, trained, self.config, self._state, self.stats,
            feature_drafter=feature_drafter, anchor=anchor,
        )  # fmt: skip
        return self._aligner

    def detach(self) -> None:
        """Takes the session's (possibly improved) adapter back out, restores the drafter's own weights, and leaves
        the learning this call earned (and the governor's measurement of it) to a background thread."""
        if not self._store.is_in:
            return
        try:
            if self._aligner is not None:
                self._aligner.wait()
        finally:
            # it keeps what it learned with what it drafted
            self._store.take_out(keep=self._call is None or self._call["weights"] is not None)
            self._owner = None
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
            rounds = list(zip(stats.drafted_per_round[call["rounds"] :], stats.copied_per_round[call["rounds"] :]))
            self._to_measure = self._to_measure[-1:] + [{
                "call": self.calls, "weights": call["weights"], "sequence": aligner.last_sequence,
                "features": aligner.last_features, "first": call["prompt_length"],
                "seconds": time.perf_counter() - call["start"], "blocked": call["blocked"],
                "update_ms": stats.update_ms[call["update_ms"] :], "rounds": rounds,
            }]  # fmt: skip
        if config.learn == "between-calls" and len(self._state.replay) >= max(1, config.min_replay):
            earned = self._state.rounds_since_update // config.update_every
            self._state.rounds_since_update %= config.update_every
            if config.updates_per_pause is not None:
                self._owed = config.updates_per_pause
            else:
                self._owed = min(self._owed, earned) + earned  # what a short pause left undone, at most as much again
        self._learner.start()

    def _next_job(self):
        """The background thread's next job (None when nothing is owed): measure a call, else one update."""
        aligner = self._aligner
        if aligner is None:
            return None
        if self._to_measure:
            return lambda should_stop: self._measure(aligner, self._to_measure.pop(0))
        if self._owed > 0 and self.learning:
            return lambda should_stop: self._update_between_calls(aligner, should_stop)
        return None

    def _update_between_calls(self, aligner: OnlineAligner, should_stop) -> None:
        started = time.perf_counter()
        updates = self.stats.updates
        with self._store.swapped_in(trained=aligner.params):
            done = aligner.update(should_stop)
            if done:
                self._store.keep()
        if done:
            self._owed -= 1
        if self.stats.updates > updates:
            self.stats.idle_updates += 1
            self.stats.idle_update_ms.append(round((time.perf_counter() - started) * 1e3, 2))

    def _measure(self, aligner: OnlineAligner, call: dict) -> None:
        """The governor's look at one call: its adapter against the starting one, on the call's own output."""
        agreements = []
        for weights in (call["weights"], self._store.initial):
            with self._store.swapped_in(weights):
                agreements.append(aligner.agreement(call["sequence"], call["first"], call["features"]))
        measure = CallMeasure.of_call(call["seconds"], call["blocked"], call["update_ms"], call["rounds"], *agreements)
        verdict = self.governor.observe(call["call"], measure)
        self.stats.governor.append(verdict.as_dict())
        if not verdict.learning:
            self._owed = 0

    def statistical_index(self, order: int) -> NGramIndex:
        """The session's n-gram index of the conversation's tokens (kept across calls, emptied by `reset`)."""
        if self._statistical is None or self._statistical.order != order:
            self._statistical = NGramIndex(order)
        return self._statistical

    def frequency_table(self, vocab_size: int):
        """The tokens of this session's conversation so far, by count (`FrequencyTable`; empty before any call with
        `shortlist="evospec"`, whose statistical index does the counting). `FrequencyTable.save_token_map(path, size,
        fill=<the drafter's static table>)` writes it for a serving engine."""
        return conversation_table(self._statistical, vocab_size)

    # -- user API ---------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forgets everything learned: the adapter goes back to the drafter's, statistics are emptied, learning
        owed by past calls is dropped, and the governor starts over."""
        with self._idle("reset"):
            self._store.reset()
            self._forget()
            self._statistical = None

    def save_adapter(self, save_directory: str | os.PathLike) -> None:
        """Writes the session's adapter as a peft adapter folder (`adapter_config.json`,
        `adapter_model.safetensors`)."""
        with self._idle("save_adapter"):
            self._store.save(save_directory)

    def load_adapter(self, directory: str | os.PathLike) -> None:
        """Replaces the session's adapter with one saved by `save_adapter` (from this drafter's architecture)."""
        weights = read_adapter(directory)
        with self._idle("load_adapter"):
            self._store.load(weights, directory)

    @contextlib.contextmanager
    def _idle(self, what: str):
        """Holds the drafter alone for one of the session's own methods (waiting for calls on other threads, and
        pausing learning between calls: `wait_learning()` first to let it finish)."""
        if self._store.is_in and self._owner == threading.get_ident():
            raise RuntimeError(f"EvoSpecSession.{what}() cannot run inside this session's own generate call.")
        self.pause_learning()
        with drafter_lock(self.drafter).exclusive():
            yield

    @contextlib.contextmanager
    def applied(self):
        """The session's adapter in the drafter for the block, e.g. to evaluate it: `with session.applied(): ...`.

        The block holds the drafter: calls on it from other threads wait until it ends. `generate` without a
        session may run inside the block on the same thread (it drafts with the session's adapter)."""
        with self._idle("applied"), self._store.swapped_in():
            yield
