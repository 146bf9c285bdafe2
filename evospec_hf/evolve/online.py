"""Where the adapter learns: online alignment of the drafter's LoRA weights from the target's verification feedback.

Every round, transformers' assisted-decoding loop hands the candidate generator the target's logits at each
verified position (`update_candidate_strategy`). `OnlineAligner.record` keeps a compact record of that round in a
bounded replay buffer: a window of context tokens, the target's top-k logits at the verified positions, and how far
the drafter was from the target's token there (its rank among the drafter's shortlist logits). Every
`update_every` rounds earn one `update`: one optimiser step on the LoRA parameters with `topk_kd_loss` over a
batch of records. The session runs the earned updates between calls (`learn="between-calls"`, the default) or
inside the decoding loop (`"in-loop"`). After each step, `anchor` pulls the weights part of the way back to the
session's starting adapter, so that one text does not overwrite what the shipped adapter knows of the domain.

Curriculum (`curriculum_start_rank`): a position is taught only when the drafter ranked the target's token within
the current bound. It starts with near misses (the target's token was in the drafter's top 4) and the accepted
positions around them, and the bound grows `curriculum_growth` times (4 by default) each time acceptance has
improved since the stage began, or after `curriculum_patience` updates without improvement. Why: near misses are
what a small LoRA step can turn into acceptances; positions the drafter was far from need large changes, give large
noisy gradients from a handful of examples, and early on mostly disturb what already works. Tokens outside the
shortlist cannot be drafted at all, so they are taught only once the bound is unlimited. Whatever the bound, the
position where a round's drafts were rejected (the target's correction) is taught too (`teach_rejected`), as online
speculative decoding does.

Safety: the target still verifies every token, so nothing learned here can change the output. A loss that is not
finite or exceeds `max_loss_ratio` times its running average, or weights that stop being finite after a step,
restore the last adapter whose loss was in bounds (and reset the optimiser). If the restored adapter's loss is over
the bound as well, the text got harder rather than the weights worse (a topic switch), and the new level is accepted.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import JsonConfigMixin
from ..models.drafter import shifted_feature_inputs
from ..utils import check_bool, check_choice, check_int, check_number
from ..vocab.shortlist import OUTSIDE_SHORTLIST  # noqa: F401 - importable from here as before
from .kd import full_kd_loss, topk_kd_loss


@dataclass
class OnlineAlignmentConfig(JsonConfigMixin):
    """How an `EvoSpecSession` adapts its drafter while generating. `save_pretrained` / `from_pretrained` write and
    read `evospec_online_alignment.json`."""

    config_name: ClassVar[str] = "evospec_online_alignment.json"
    format_name: ClassVar[str] = "evospec-online-alignment"
    format_version: ClassVar[int] = 1

    update_every: int = field(default=4, metadata={"help": "Rounds (target verifications) between two updates."})
    batch_size: int = field(default=4, metadata={"help": "Replay records per update (the newest one always in)."})
    window: int = field(default=48, metadata={"help": "Context tokens the drafter re-reads per record."})
    topk: int = field(default=32, metadata={"help": "Target logits kept per verified position (the KD support)."})
    negatives: int = field(
        default=1024,
        metadata={
            "help": (
                "Random token ids added to the drafter's softmax in each update. Without them the loss only "
                "reshuffles mass among the batch's top-k ids, and nothing holds down the rest of the vocabulary."
            )
        },
    )
    replay_size: int = field(default=128, metadata={"help": "Records kept; the oldest is dropped first."})
    min_replay: int = field(
        default=16,
        metadata={
            "help": (
                "Records collected before the first update, so that the first batches are not drawn from a "
                "handful of positions."
            )
        },
    )
    lr: float = field(default=5e-4, metadata={"help": "AdamW learning rate on the LoRA parameters."})
    warmup_updates: int = field(
        default=16,
        metadata={
            "help": (
                "The learning rate rises linearly to `lr` over this many updates (and again after a rollback). "
                "Adam's first steps move every parameter by about `lr` whatever its gradient: on Gemma's distilled "
                "adapter one step at 1e-4 cut the drafter's agreement from 10.5% to 7.4%. 0 disables."
            )
        },
    )
    curriculum_start_rank: int | None = field(
        default=4,
        metadata={
            "help": (
                "Teach positions where the drafter ranked the target's token below this bound, growing "
                "`curriculum_growth`x per curriculum stage. None: no curriculum, every verified position is taught."
            )
        },
    )
    curriculum_patience: int = field(
        default=8, metadata={"help": "Updates after which a stage ends even if acceptance has not improved."}
    )
    curriculum_growth: int = field(
        default=4, metadata={"help": "Factor by which the curriculum's bound grows at the end of each stage (>= 2)."}
    )
    curriculum_end_rank: int = field(
        default=4096,
        metadata={
            "help": (
                "Once the growing bound exceeds this rank, the curriculum ends: every verified position is taught, "
                "tokens outside the shortlist included."
            )
        },
    )
    curriculum_acceptance_gain: float = field(
        default=0.05,
        metadata={
            "help": (
                "A stage ends early once acceptance (tokens accepted per round, averaged over the last "
                "`curriculum_acceptance_rounds` rounds) exceeds its value at the stage's start by more than this."
            )
        },
    )
    curriculum_acceptance_rounds: int = field(
        default=16, metadata={"help": "The recent rounds over which the curriculum measures acceptance."}
    )
    async_updates: bool = field(
        default=False,
        metadata={
            "help": (
                "With `learn='in-loop'` only: run each update in a background thread while the target verifies the "
                "next round (it never overlaps drafting). On a 2-core CPU both compete for the same cores (measured "
                "in docs/benchmarks/online-learning.md)."
            )
        },
    )
    max_loss_ratio: float = field(
        default=4.0, metadata={"help": "Roll back when a loss exceeds this multiple of its running average."}
    )
    refresh_cache: bool = field(
        default=True,
        metadata={
            "help": (
                "After an update, the drafter re-reads the sequence instead of drafting on KV entries computed with "
                "its old weights (costs one drafter forward over the context per update)."
            )
        },
    )
    kd: str = field(
        default="topk",
        metadata={
            "help": (
                "'topk': KD restricted to the target's top-k (evospec_hf). 'full': the standard baseline, full "
                "target logits in the replay buffer and full-vocabulary drafter logits and gradients."
            )
        },
    )
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": (
                "Train only the LoRA weights of the last N decoder layers (fewer parameters, and no backward "
                "through the layers below). None trains every LoRA weight."
            )
        },
    )
    lora_rank: int = field(
        default=16, metadata={"help": "Rank of the LoRA adapter added to a drafter that has none."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the replay sampling."})
    learn: str = field(
        default="between-calls",
        metadata={
            "help": (
                "'between-calls': a call only drafts and records; the updates it earned (one per `update_every` "
                "rounds) run in a background thread after it returns, while the person reads, and yield as soon as "
                "any call wants the drafter. 'in-loop': updates run inside the decoding loop, as rounds go."
            )
        },
    )
    updates_per_pause: int | None = field(
        default=None,
        metadata={
            "help": (
                "Updates to run between two calls ('between-calls'). None: one per `update_every` rounds of the "
                "call that just ended (plus what an earlier pause left undone, at most as much again)."
            )
        },
    )
    anchor: float = field(
        default=0.2,
        metadata={
            "help": (
                "After each update, every trained weight moves this fraction of the way back to the session's "
                "starting adapter (the shipped one): what one text teaches fades unless the next texts teach it "
                "again, so one text does not overwrite the domain. 0 disables. On Gemma's feature drafter over 20 "
                "code texts (a replay of recorded streams, results/streams/replay-code): the next texts' agreement "
                "fell 8 points with 0, 1.6-2 points with 0.05, 0.3-0.6 points (noise) with 0.2."
            )
        },
    )
    teach_rejected: bool = field(
        default=True,
        metadata={
            "help": (
                "Teach the position where a round's drafts were rejected (the target's correction) whatever the "
                "curriculum's bound, as online speculative decoding does, besides the curriculum's near misses."
            )
        },
    )
    governor: bool = field(
        default=True,
        metadata={
            "help": (
                "Turn learning off when it does not pay: after each call, the adapter the call drafted with and the "
                "starting adapter are compared on every generated position of that call's output (text the adapter "
                "had not learned from); the tau gain is converted into seconds saved and weighed against the seconds "
                "learning made calls wait. See `LearningGovernor`."
            )
        },
    )
    governor_calls: int = field(
        default=4,
        metadata={
            "help": (
                "Calls over which the governor sums gain and cost; it decides once this many calls were drafted "
                "with a learned adapter."
            )
        },
    )

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Checks every field; raises a ValueError naming the field and its value."""
        for name in ("update_every", "batch_size", "window", "topk", "replay_size", "curriculum_patience", "lora_rank",
                     "curriculum_end_rank", "curriculum_acceptance_rounds"):  # fmt: skip
            check_int(name, getattr(self, name), minimum=1)
        check_int("updates_per_pause", self.updates_per_pause, minimum=0, optional=True)
        check_int("governor_calls", self.governor_calls, minimum=1)
        check_number("anchor", self.anchor, minimum=0, below=1)  # 1 would undo every update
        check_bool("teach_rejected", self.teach_rejected)
        check_bool("governor", self.governor)
        check_choice("learn", self.learn, ("between-calls", "in-loop"))
        for name in ("negatives", "min_replay", "warmup_updates"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("trainable_layers", self.trainable_layers, minimum=1, optional=True)
        check_int("curriculum_start_rank", self.curriculum_start_rank, minimum=1, optional=True)
        check_int("curriculum_growth", self.curriculum_growth, minimum=2)  # 1 would never widen the bound
        check_int("seed", self.seed, minimum=None)
        check_number("curriculum_acceptance_gain", self.curriculum_acceptance_gain, minimum=0)
        check_number("lr", self.lr, above=0)
        check_number("max_loss_ratio", self.max_loss_ratio, above=1)
        check_bool("async_updates", self.async_updates)
        check_bool("refresh_cache", self.refresh_cache)
        check_choice("kd", self.kd, ("topk", "full"))
        if self.min_replay > self.replay_size:
            raise ValueError(
                f"`min_replay` ({self.min_replay}) must not exceed `replay_size` ({self.replay_size}): the buffer "
                f"would never hold enough records for a first update."
            )


@dataclass
class AlignmentStats:
    """What online alignment did, across the calls of one session."""

    rounds: int = 0
    updates: int = 0
    rollbacks: int = 0
    skipped: int = 0  # updates with no position eligible under the curriculum
    losses: list = field(default_factory=list)
    update_ms: list = field(default_factory=list)
    accepted_per_round: list = field(default_factory=list)  # tokens accepted each round, for acceptance curves
    max_rank: list = field(default_factory=list)  # the curriculum's bound at each update
    drafted_per_round: list = field(default_factory=list)  # tokens offered to the target each round
    copied_per_round: list = field(default_factory=list)  # whether each round's drafts were copied (lookup)
    idle_updates: int = 0  # updates run between calls, while no call wanted the drafter
    idle_update_ms: list = field(default_factory=list)
    yielded: int = 0  # updates abandoned half-way because a call wanted the drafter
    blocked_ms: list = field(default_factory=list)  # per call: how long it waited for background learning to yield
    governor: list = field(default_factory=list)  # one `LearningGovernor` verdict per call it measured

    @property
    def in_call_updates(self) -> int:
        """Updates that ran inside a call (`learn="in-loop"`), i.e. while someone waited."""
        return self.updates - self.idle_updates


class OnlineAligner:
    """Trains the LoRA parameters of a drafter from verification feedback. Built by `EvoSpecSession.attach`.

    Args:
        body: the drafter's decoder body (`model.base_model` beneath any peft wrapper): tokens -> hidden states.
        head_weight, head_bias: the drafter's frozen LM head.
        softcap: what the drafter applies after its head (`ops.softcap.LogitTransform`), or None.
        params: the LoRA parameters to train (a name -> tensor dict).
        config: `OnlineAlignmentConfig`.
        state: the session's `AlignerState` (optimizer, replay buffer, curriculum), kept across calls.
        stats: the session's `AlignmentStats`.
        feature_drafter: for a feature drafter, the model beneath peft: records then carry the target's hidden
            states, and the drafter re-reads them with the tokens (`evospec_hf.models.drafter.feature_inputs`).
        anchor: the weights `config.anchor` pulls the trained ones back to (the session's starting adapter).
    """

    def __init__(
        self, body, head_weight, head_bias, softcap, params: dict, config: OnlineAlignmentConfig, state, stats,
        feature_drafter=None, anchor: dict | None = None,
    ):  # fmt: skip
        self.body, self.head_weight, self.head_bias, self.softcap = body, head_weight, head_bias, softcap
        self.anchor = anchor
        self.feature_drafter = feature_drafter
        self.params = params
        self.config, self.state, self.stats = config, state, stats
        if state.optimizer is None:
            state.reset_optimizer(list(params.values()), config)
        else:  # the same session on a newly attached drafter: point the optimizer at these tensors
            state.optimizer.param_groups[0]["params"] = list(params.values())
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_sequence: torch.Tensor | None = None
        self.last_features: torch.Tensor | None = None

    @property
    def weights_version(self) -> int:
        """Changes whenever an update or a rollback changed the adapter (so a drafter cache made before is stale)."""
        return self.stats.updates + self.stats.rollbacks

    # -- feedback ----------------------------------------------------------------------------------------------
    def record(
        self, sequence: torch.LongTensor, scores: torch.Tensor, num_matches: int, ranks: torch.Tensor,
        features: torch.Tensor | None = None, copied: bool = False,
    ) -> None:  # fmt: skip
        """Stores one verified round.

        Args:
            sequence: `(seq_len,)` the sequence after verification; its last `num_matches + 1` tokens are the
                accepted drafts and the target's own token.
            scores: `(1, num_drafted + 1, V)` the target's (processed) logits for the drafted positions and one more.
            num_matches: drafts accepted.
            ranks: `(num_matches + 1,)` the drafter's rank of the target's token at each verified position.
            features: a feature drafter's `(1, n, F)` target hidden states of the sequence's first `n >= seq_len - 2`
                positions (the ones its pairs read).
            copied: the drafts were copied from the context (prompt lookup), not drafted: the adapter did not
                choose them (the governor counts such rounds apart).
        """
        self.last_sequence, self.last_features = sequence, features  # the call's output so far (the governor's)
        self.stats.rounds += 1
        self.stats.accepted_per_round.append(int(num_matches))
        self.stats.drafted_per_round.append(int(scores.shape[1]) - 1)
        self.stats.copied_per_round.append(bool(copied))
        verified = num_matches + 1
        teacher = scores[0, :verified].float()
        if bool(torch.isnan(teacher).any() or torch.isposinf(teacher).any()):
            return  # a corrupt teacher row teaches nothing; never let it into the buffer (-inf is a masked token)
        end = sequence.shape[0] - 1  # the window holds the contexts of every verified position
        start = max(0, end - self.config.window)
        first = end - verified - start  # hidden state index predicting the first verified token
        if first < 0:
            return  # window shorter than a round: nothing to re-read
        # the last verified position is the target's correction of a rejected draft, or the bonus token after all
        rejected = num_matches < scores.shape[1] - 1
        record = {"tokens": sequence[start:end].clone(), "first": first, "ranks": ranks.clone(), "rejected": rejected}
        if features is not None:
            if first < 1:
                return  # a feature drafter predicts token t from the pair at t - 2: the window must start earlier
            record["features"] = features[0, start:end].detach().clone()
        if self.config.kd == "topk":
            values, ids = teacher.topk(min(self.config.topk, teacher.shape[-1]), dim=-1)
            record.update(teacher_ids=ids, teacher_logits=values)
        else:
            record.update(teacher_full=teacher.clone())
        self.state.replay.append(record)
        self.state.rounds_since_update += 1

    def update_due(self) -> bool:
        replay = len(self.state.replay)
        return self.state.rounds_since_update >= self.config.update_every and replay >= max(1, self.config.min_replay)

    # -- training ------------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Runs an update if one is due (`learn="in-loop"` only): now, or in a background thread with
        `async_updates`."""
        if self.config.learn != "in-loop" or not self.update_due():
            return
        self.state.rounds_since_update = 0
        if not self.config.async_updates:
            self.update()
            return
        self.wait()
        self._thread = threading.Thread(target=self._update_in_thread, name="evospec-online-update", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Blocks until a background update is over (called before drafting, so the weights never change under it)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("evospec_hf's online update failed") from error

    def _update_in_thread(self) -> None:
        try:
            self.update()
        except BaseException as err:  # re-raised on the generating thread by `wait`
            self._error = err

    def update(self, should_stop=None) -> bool:
        """One optimiser step on a replay batch, with rollback on a bad loss or non-finite weights.

        `should_stop` (a callable, for learning between calls) is asked once the loss is known: if it says True, the
        step is abandoned (nothing changes) and False is returned. Otherwise returns True."""
        start = time.perf_counter()
        batch = self._sample()
        max_rank = self.state.max_rank
        with torch.enable_grad():
            loss = self._loss(batch, max_rank)
            if should_stop is not None and should_stop():
                self.stats.yielded += 1
                return False
            if loss is None:
                self.stats.skipped += 1
                return True
            value = loss.item()
            average = self.state.loss_average
            if not torch.isfinite(loss) or not self._weights_finite():
                # (a finite loss does not prove finite weights: a parameter the loss does not reach stays NaN, and
                # snapshotting it as "last good" would make every later rollback restore the NaN)
                self._rollback()
                return True
            if average is not None and value > self.config.max_loss_ratio * average:
                if not self.state.rolled_back:
                    self._rollback()
                    return True
                # the last good adapter is over the bound too: the text got harder (e.g. a topic switch), the
                # weights did not diverge. Accept the new level instead of rolling back forever.
                average = None
            self.state.rolled_back = False
            self._snapshot()  # these weights gave an in-bounds loss: the last good adapter
            self.state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.state.optimizer.step()
            self.state.scheduler.step()
            self._pull_to_anchor()
        if not self._weights_finite():
            self._rollback()
            return True
        self.state.loss_average = value if average is None else 0.9 * average + 0.1 * value
        self.stats.updates += 1
        self.stats.losses.append(round(value, 4))
        self.stats.max_rank.append(max_rank)
        self.stats.update_ms.append(round((time.perf_counter() - start) * 1e3, 2))
        self._advance_curriculum()
        return True

    @torch.no_grad()
    def _pull_to_anchor(self) -> None:
        if self.config.anchor and self.anchor is not None:
            for name, p in self.params.items():
                p.lerp_(self.anchor[name].to(p.device, p.dtype), self.config.anchor)

    @torch.no_grad()
    def agreement(self, sequence: torch.LongTensor, first: int, features=None, positions: int = 64) -> tuple:
        """(hits, positions): teacher-forced on a call's output, how often the drafter's greedy token over the whole
        vocabulary is the token the target produced, with the weights the drafter holds now.

        Every generated position counts (at most the last `positions`), not only the verified ones: those are
        chosen by the drafter that drafted them (its accepted drafts), which would favour it over any other adapter.

        Args:
            sequence: `(seq_len,)` prompt and output.
            first: index of the first generated token.
            features: a feature drafter's `(1, n, F)` target hidden states of the sequence (as `record` takes them).
        """
        end = sequence.shape[0] - 1
        window = {"tokens": sequence[:end]}
        if features is not None:
            window["features"] = features[0, :end]
        hidden = self._hidden_states(window)  # row i predicts token i + 1
        rows = torch.arange(max(first - 1, end - positions, 0), min(end, hidden.shape[0]))
        if rows.numel() == 0:
            return 0, 0
        logits = F.linear(hidden[rows], self.head_weight, self.head_bias)  # a positive scale or a softcap keeps the order
        hits = int((logits.argmax(-1) == sequence[rows + 1].to(logits.device)).sum())
        return hits, int(rows.numel())

    def _sample(self) -> list:
        replay = self.state.replay
        newest = replay[-1]
        others = random.Random(self.config.seed + self.stats.updates).sample(
            range(len(replay) - 1), min(self.config.batch_size - 1, len(replay) - 1)
        )
        return [newest] + [replay[i] for i in others]

    def _loss(self, batch: list, max_rank: int | None) -> torch.Tensor | None:
        """The weighted KD loss over the batch's eligible positions, or None when none is eligible."""
        hidden, weights, teacher_ids, teacher_logits, teacher_full = [], [], [], [], []
        for record in batch:
            ranks = record["ranks"]
            eligible = torch.ones_like(ranks, dtype=torch.bool) if max_rank is None else ranks <= max_rank
            if self.config.teach_rejected and record.get("rejected", False):
                eligible[-1] = True
            if not bool(eligible.any()):
                continue
            first = record["first"]
            hidden.append(self._hidden_states(record)[first : first + ranks.shape[0]])
            weights.append(eligible.float())
            if "teacher_ids" in record:
                teacher_ids.append(record["teacher_ids"])
                teacher_logits.append(record["teacher_logits"])
            else:
                teacher_full.append(record["teacher_full"])
        if not hidden:
            return None
        hidden, weights = torch.cat(hidden), torch.cat(weights)
        if teacher_full:
            return full_kd_loss(hidden, self.head_weight, self.head_bias, torch.cat(teacher_full), weights, self.softcap)
        negatives = None
        if self.config.negatives:
            generator = torch.Generator().manual_seed(self.config.seed + self.stats.updates)
            negatives = torch.randint(0, self.head_weight.shape[0], (self.config.negatives,), generator=generator)
        return topk_kd_loss(
            hidden, self.head_weight, self.head_bias, torch.cat(teacher_ids), torch.cat(teacher_logits), weights,
            negatives=negatives.to(self.head_weight.device) if negatives is not None else None, softcap=self.softcap,
        )  # fmt: skip

    def _hidden_states(self, record: dict) -> torch.Tensor:
        """`(window, d)`: row i is the drafter's hidden state from which it predicts the window's token i + 1."""
        tokens = record["tokens"][None]
        if "features" not in record:
            return self.body(input_ids=tokens, use_cache=False).last_hidden_state[0]
        # pair j = (the target's hidden state at j, token j + 1) predicts token j + 2: row i is pair i - 1
        inputs = shifted_feature_inputs(self.feature_drafter, tokens, features=record["features"][None])
        states = self.body(inputs_embeds=inputs, use_cache=False).last_hidden_state[0]
        return torch.cat([states.new_zeros(1, states.shape[-1]), states])

    def _weights_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.params.values())

    def _snapshot(self) -> None:
        for name, p in self.params.items():
            self.state.last_good[name] = p.detach().clone()

    def _rollback(self) -> None:
        self.stats.rollbacks += 1
        self.state.rolled_back = True
        with torch.no_grad():
            for name, p in self.params.items():
                if name in self.state.last_good:
                    p.copy_(self.state.last_good[name])
        self.state.reset_optimizer(list(self.params.values()), self.config)

    def _advance_curriculum(self) -> None:
        state = self.state
        if state.max_rank is None:
            return
        config = self.config
        recent = self.stats.accepted_per_round[-config.curriculum_acceptance_rounds :]
        acceptance = sum(recent) / len(recent) if recent else 0.0
        if state.stage_acceptance is None:  # the first update of a stage: acceptance when it began
            state.stage_acceptance = acceptance
        state.stage_updates += 1
        if (
            acceptance > state.stage_acceptance + config.curriculum_acceptance_gain
            or state.stage_updates >= config.curriculum_patience
        ):
            state.max_rank = state.max_rank * config.curriculum_growth
            if state.max_rank > config.curriculum_end_rank:
                state.max_rank = None  # every position, tokens outside the shortlist included
            state.stage_updates, state.stage_acceptance = 0, acceptance


class AlignerState:
    """What online alignment carries from one `generate` call to the next within a session."""

    def __init__(self, config: OnlineAlignmentConfig):
        self.replay: collections.deque = collections.deque(maxlen=config.replay_size)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.last_good: dict = {}
        self.loss_average: float | None = None
        self.rolled_back = False  # the last update ended in a rollback
        self.rounds_since_update = 0
        self.max_rank = config.curriculum_start_rank
        self.stage_updates, self.stage_acceptance = 0, None

    def reset_optimizer(self, params: list, config: OnlineAlignmentConfig) -> None:
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        warmup = config.warmup_updates
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0
        )
