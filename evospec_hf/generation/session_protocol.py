"""What a `generate` call needs of a session: `SessionProtocol`.

`evospec_session=` takes an `EvoSpecSession` (`evospec_hf.evolve.session`). The generation package drives it
through these members only, so it imports nothing from `evolve/`: the session is passed in, and is checked by what
it has (`isinstance(session, SessionProtocol)`), not by its class.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class SessionProtocol(Protocol):
    """A session as `generate` uses it, once per call: `pause_learning`, then (holding the drafter alone)
    `attach` ... `detach`; `statistical_index` while the call's vocabulary is built."""

    online: bool  # whether the session trains (a learning session's verifications use the target's plain head)

    def pause_learning(self) -> None:
        """Stops the session's background learning before the call waits for the drafter."""

    def attach(self, assistant_model, head_weight, head_bias, softcap, prompt_length: int = 0):
        """Puts the session's adapter into the drafter; returns the call's online learner, or None."""

    def detach(self) -> None:
        """Takes the adapter back out and restores the drafter's own weights."""

    def statistical_index(self, order: int):
        """The session's n-gram index of its conversation (`vocab.indexes.NGramIndex`), kept across calls."""
