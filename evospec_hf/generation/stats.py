"""`DraftStats`: what drafting achieved, filled round by round as an observer of the candidate generator."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rounds import Draft, RoundResult


@dataclass
class DraftStats:
    """What drafting achieved in one or more `generate` calls. Pass one as `generate(..., evospec_stats=stats)`.

    Attributes:
        rounds: draft-and-verify rounds (target forward passes, the prefill included).
        drafted: tokens proposed (by the drafter and the context lookup).
        accepted: proposed tokens the target accepted.
        accepted_per_round: tokens accepted in each round, in order (for curves of tau over time).
        sources_per_round: where each round's drafts came from, in order: "drafter", "lookup", or "" when nothing
            was drafted (appended when the drafts go to the target, so a streamer can label a round's tokens).
        checked, in_shortlist: verified positions that had a drafter step, and how many of the target's tokens there
            were inside that step's vocabulary (`shortlist_recall`).
        draft_seconds: wall time drafting (drafter body, vocabulary upkeep, routing and LM head, lookups), of which
            `head_seconds` over `head_steps` steps in the drafter's LM head.
        verify_seconds: wall time from the drafts' hand-over to the verification feedback (the target's forward and
            transformers' acceptance step).
        learn_seconds: wall time online alignment kept the generating thread busy (updates, and waiting on them).
        lookup_rounds, lookup_drafted, lookup_accepted: the rounds whose drafts were copied from the context
            (`EvoSpecConfig.lookup_tokens`), and their drafted and accepted tokens (also counted in the totals).
        entropy_stops: drafter rounds that `EvoSpecConfig.entropy_stop` ended before their length.
        lossy_accepted: accepted drafts the target would not have chosen (`EvoSpecConfig.lossy_acceptance`; counted
            in `accepted`).
        verifier_checked, verifier_removed, verifier_seconds: drafts HiSpec's intermediate verifier judged
            (`EvoSpecConfig.intermediate_verifier`), the drafts it took out of rounds, and its wall time (part of
            `draft_seconds`).
        screen_calls, screen_positions: the target's head calls computed through the int8 screen
            (`EvoSpecConfig.screen_head`), and the positions they verified; screen_survivors: rows rescored exactly
            per screened position, in order; screen_fallbacks: screened calls that ran the full head after all;
            screen_full_calls: head calls run in full (screen not allowed, or measured slower for that row count).
        rows: for a batched call, each row's own `DraftStats` (the fields above are then totals over the rows,
            except `verify_seconds`: the wall time of the batched verifications, which every row shared).
        On CUDA these are host times: kernels still running are not waited for.
    """

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_round: list = field(default_factory=list)
    sources_per_round: list = field(default_factory=list)
    checked: int = 0
    in_shortlist: int = 0
    draft_seconds: float = 0.0
    head_seconds: float = 0.0
    head_steps: int = 0
    verify_seconds: float = 0.0
    learn_seconds: float = 0.0
    lookup_rounds: int = 0
    lookup_drafted: int = 0
    lookup_accepted: int = 0
    entropy_stops: int = 0
    lossy_accepted: int = 0
    verifier_checked: int = 0
    verifier_removed: int = 0
    verifier_seconds: float = 0.0
    screen_calls: int = 0
    screen_positions: int = 0
    screen_survivors: list = field(default_factory=list)
    screen_fallbacks: int = 0
    screen_full_calls: int = 0
    rows: list = field(default_factory=list)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens produced per round, counting the target's own token (tau; plain decoding is 1.0)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def drafter_drafted(self) -> int:
        """Tokens the drafter itself proposed (not copied by the context lookup)."""
        return self.drafted - self.lookup_drafted

    @property
    def drafter_accepted(self) -> int:
        """Tokens the drafter itself proposed that the target accepted."""
        return self.accepted - self.lookup_accepted

    @property
    def shortlist_recall(self) -> float:
        """Share of the target's tokens at drafted positions that the drafter's vocabulary held."""
        return self.in_shortlist / self.checked if self.checked else 0.0

    @property
    def head_ms_per_step(self) -> float:
        return 1e3 * self.head_seconds / self.head_steps if self.head_steps else 0.0

    def add_screen(self, screen) -> None:
        """Adds what a call's `HeadScreen` (`evospec_hf/ops/verify_head.py`) counted."""
        self.screen_calls += screen.calls
        self.screen_positions += screen.positions
        self.screen_survivors.extend(screen.survivors)
        self.screen_fallbacks += screen.fallbacks
        self.screen_full_calls += screen.full_calls

    def add_rows(self, rows: list["DraftStats"], verify_seconds: float) -> None:
        """Adds a batched call: its rows' own stats (kept in `rows`), summed, and the batch's verification time."""
        for row in rows:
            for name, value in vars(row).items():
                if name in ("rows", "verify_seconds"):
                    continue
                if isinstance(value, list):
                    getattr(self, name).extend(value)
                else:
                    setattr(self, name, getattr(self, name) + value)
        self.verify_seconds += verify_seconds
        self.rows.extend(rows)

    # -- as a round observer of the candidate generator ------------------------------------------------------------
    def handed_over(self, draft: Draft) -> None:
        self.draft_seconds += draft.seconds
        self.head_seconds += draft.head_seconds
        self.head_steps += max(draft.head_steps, len(draft.steps))  # steps whose head ran, cut ones included
        self.lookup_rounds += draft.source == "lookup"
        self.entropy_stops += draft.entropy_stopped
        self.sources_per_round.append(draft.source if len(draft) else "")

    def verified(self, result: RoundResult) -> None:
        self.rounds += 1
        self.drafted += result.drafted
        self.accepted += result.accepted
        self.accepted_per_round.append(result.accepted)
        self.verify_seconds += result.verify_seconds
        if result.draft.source == "lookup":
            self.lookup_drafted += result.drafted
            self.lookup_accepted += result.accepted
        checked, inside = result.draft.vocabulary_hits(result.targets)
        self.checked += checked
        self.in_shortlist += inside
