"""`EvoSpecCandidateGenerator`: where the drafter runs.

transformers' `AssistedCandidateGenerator` calls `assistant_model.generate()` every round, paying its whole setup
(config copies, processor and stopping-criteria lists, cache checks) for a handful of tokens. This subclass keeps the
same contract but drafts with a bare loop over the drafter's decoder body: it keeps its own KV cache across rounds,
crops the entries of rejected drafts, and computes the LM head only over the shortlist (`evospec_hf.vocab`).
The target verifies the candidates over the full vocabulary in transformers' own assisted-decoding loop.

Each round first asks the context lookup (`lookup.py`) for a continuation copied from the sequence; only when there
is none does the drafter run. How many tokens a round drafts is the schedule's choice (`schedule.py` for the
default, `draft_schedule="cost"`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList
from transformers.generation.candidate_generator import AssistedCandidateGenerator

from ..config import EvoSpecConfig
from ..evolve.online import OUTSIDE_SHORTLIST
from ..ops import resolve_head_backend
from ..utils import unwrap_peft
from ..vocab import build_shortlist, resolve_static_table
from ..vocab.indexes import context_retrieval
from ..vocab.router import load_routed_head
from ..vocab.shortlist import expand_to_vocab
from .lookup import ContextLookup
from .schedule import CostAwareLength


@dataclass
class DraftStats:
    """What drafting achieved in one or more `generate` calls. Pass one as `generate(..., evospec_stats=stats)`.

    Attributes:
        rounds: draft-and-verify rounds (target forward passes after the prefill).
        drafted: tokens the drafter proposed.
        accepted: drafted tokens the target accepted.
        accepted_per_round: drafted tokens accepted in each round, in order (for curves of tau over time).
        checked, in_shortlist: verified positions that had a draft step, and how many of the target's tokens there
            were inside the drafter's shortlist (`shortlist_recall`).
        draft_seconds: wall time drafting (drafter body, shortlist upkeep, routing and LM head), of which
            `head_seconds` over `head_steps` steps in the LM head (`draft_logits`).
        verify_seconds: wall time from the drafts' hand-over to the verification feedback (the target's forward and
            transformers' acceptance step).
        learn_seconds: wall time online alignment kept the generating thread busy (updates, and waiting on them).
        lookup_rounds, lookup_drafted, lookup_accepted: the rounds whose drafts were copied from the context
            (`EvoSpecConfig.lookup_tokens`), and their drafted and accepted tokens (also counted in the totals).
        On CUDA these are host times: kernels still running are not waited for.
    """

    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    accepted_per_round: list = field(default_factory=list)
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

    @property
    def mean_accepted_length(self) -> float:
        """Tokens produced per round, counting the target's own token (tau; plain decoding is 1.0)."""
        return (self.accepted + self.rounds) / self.rounds if self.rounds else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def shortlist_recall(self) -> float:
        """Share of the target's tokens at drafted positions that the drafter's shortlist held."""
        return self.in_shortlist / self.checked if self.checked else 0.0

    @property
    def head_ms_per_step(self) -> float:
        return 1e3 * self.head_seconds / self.head_steps if self.head_steps else 0.0


class EvoSpecCandidateGenerator(AssistedCandidateGenerator):
    """Drafts candidate tokens over a vocabulary shortlist for transformers' assisted decoding.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt.
        assistant_model (`PreTrainedModel`): the drafter, a decoder-only causal LM sharing the target's vocabulary.
        generation_config (`GenerationConfig`): the target's prepared generation config.
        model_kwargs (`dict`): the target's model kwargs (only used by the parent class).
        evospec_config (`EvoSpecConfig`): drafting options.
        target_vocab_size (`int`): rows of the target's LM head; must equal the drafter's.
        inputs_tensor (`torch.Tensor`, *optional*): see `AssistedCandidateGenerator`.
        logits_processor (`LogitsProcessorList`, *optional*): the target's processors, applied to draft scores too.
        stats (`DraftStats`, *optional*): filled in as rounds complete.
        session (`EvoSpecSession`, *optional*): learns from every round's verification (online alignment) and
            keeps the statistical index across calls.
        verify_seconds (`dict`, *optional*): with `draft_schedule="cost"`, the target's measured verification
            seconds per draft length, kept across calls (`CostAwareLength`).
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        assistant_model,
        generation_config,
        model_kwargs: dict,
        evospec_config: EvoSpecConfig,
        target_vocab_size: int,
        inputs_tensor: torch.Tensor | None = None,
        logits_processor: LogitsProcessorList | None = None,
        stats: DraftStats | None = None,
        session=None,
        verify_seconds: dict | None = None,
    ):
        if input_ids.shape[0] != 1:
            raise ValueError(
                f"evospec_hf drafts for one sequence at a time, but got a batch of {input_ids.shape[0]} "
                "(transformers' assisted decoding has the same limit). Call generate once per prompt."
            )
        if assistant_model.config.is_encoder_decoder:
            raise ValueError("evospec_hf needs a decoder-only drafter (a causal LM).")
        head = assistant_model.get_output_embeddings()
        if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
            raise ValueError(f"{type(assistant_model).__name__} has no linear LM head that evospec_hf can shortlist.")
        if head.weight.shape[0] != target_vocab_size:
            raise ValueError(
                f"The drafter's vocabulary ({head.weight.shape[0]} LM-head rows) differs from the target's "
                f"({target_vocab_size}). evospec_hf verifies draft token ids directly, so both must use the same "
                "tokenizer; for drafters with another tokenizer use transformers' `assistant_tokenizer=` without "
                "`evospec_config`."
            )
        super().__init__(input_ids, assistant_model, generation_config, model_kwargs, inputs_tensor, logits_processor)
        self.evospec_config = evospec_config
        self.stats = stats if stats is not None else DraftStats()
        self.num_assistant_tokens = evospec_config.num_draft_tokens
        self.device = assistant_model.device
        self.do_sample = bool(generation_config.do_sample)
        # the parent filtered the target's processors into a plain list; make it callable again
        self.logits_processor = LogitsProcessorList(self.logits_processor)
        # greedy with no processors: argmax over the shortlist logits, nothing full-vocabulary sized per token
        self.greedy_fast_path = not self.do_sample and len(self.logits_processor) == 0

        # a peft-wrapped drafter's `base_model` is the LoRA wrapper: the decoder body is on the model beneath
        self.drafter_body = unwrap_peft(assistant_model).base_model
        self.head_weight = head.weight.detach()
        self.vocab_size = self.head_weight.shape[0]
        self.head_bias = None if getattr(head, "bias", None) is None else head.bias.detach()
        self.logit_softcap = getattr(assistant_model.config.get_text_config(), "final_logit_softcapping", None)
        _check_drafter_head(assistant_model, self)

        always_in = [t for t in (generation_config._eos_token_tensor, generation_config._pad_token_tensor) if t is not None]
        always_in = torch.cat([t.flatten() for t in always_in]) if always_in else torch.empty(0, dtype=torch.long)
        self.head_backend = resolve_head_backend(evospec_config.head_backend, self.head_weight.device)
        static_table = None
        if "static" in evospec_config.shortlist_sources:
            static_table = resolve_static_table(
                evospec_config.static_shortlist_path, assistant_model, self.head_weight.shape[0]
            )
        self.shortlist = build_shortlist(
            evospec_config, self.head_weight, self.head_bias, always_in, self.head_backend,
            static_table=static_table, cache_owner=head,
        )  # fmt: skip
        self.routed = None
        if "router" in evospec_config.shortlist_sources:
            budget = evospec_config.shortlist_size - self.shortlist.capacity
            self.routed = load_routed_head(evospec_config.router_path, assistant_model, head, budget)
        self.observes_context = "context" in evospec_config.shortlist_sources
        self.num_observed = 0  # tokens of the sequence already passed to the context source
        # shortlist="evospec": semantic neighbours and n-gram continuations per round (None otherwise); with a
        # session, the statistical index keeps its counts across generate calls
        ngram = None
        if session is not None and evospec_config.uses_retrieval:
            ngram = session.statistical_index(evospec_config.ngram_order)
        self.retrieval = context_retrieval(evospec_config, assistant_model, head, ngram)
        # context lookup: drafts copied from the sequence when its last tokens occurred before (None: disabled)
        self.lookup = None
        if evospec_config.lookup_tokens > 0:
            self.lookup = ContextLookup(evospec_config.lookup_max_ngram, evospec_config.lookup_min_ngram)
        self.lookup_round = False  # whether the last candidates came from the lookup
        self.lookup_length = evospec_config.lookup_tokens  # tokens the next lookup round may copy
        # draft_schedule="cost": lengths chosen for tokens per second from measured costs (None otherwise)
        self.cost = None
        if evospec_config.draft_schedule == "cost":
            self.cost = CostAwareLength(verify_seconds)
        self._round_draft_seconds = 0.0
        self._prefilled = False  # the first verification also reads the whole prompt: its time is not a round's

        self.session = session
        # online alignment (evospec_hf.evolve): None without a session, or with a session that does not learn
        self.learner = None
        if session is not None:
            self.learner = session.attach(assistant_model, self.head_weight, self.head_bias, self.logit_softcap)
        self._steps = []  # the last round's (column ids, logits), for the learner's ranks

        self.cache = self._new_cache()
        self._cache_weights = self.learner.weights_version if self.learner is not None else 0
        self._handed_over = None  # when the last drafts went to the target (for `DraftStats.verify_seconds`)

    def _new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.assistant_model.config)
        # sliding-window layers (e.g. Gemma 3) must keep their past until we crop rejected drafts
        cache.activate_past_recording()
        return cache

    def draft_logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The drafter's LM head for one position, over the shortlist only.

        Args:
            hidden: `(1, hidden_size)` final hidden state.

        Returns:
            the token id of each logit column (`(n,)`, or None when the columns are the whole vocabulary) and the
            float32 logits `(1, n)`. With a router, the columns change at every step: the shortlist's slots, then
            the tokens of the clusters the router picks (those already in the slots are masked, not repeated).
        """
        if self.shortlist is None:
            ids, logits = None, F.linear(hidden, self.head_weight, self.head_bias).float()
        else:
            ids, logits = self.shortlist.token_ids, self.shortlist.logits(hidden)
            if self.routed is not None:
                routed_ids, routed_logits = self.routed.logits(hidden, self.routed.select(hidden))
                routed_logits = routed_logits.masked_fill(self.shortlist.contains(routed_ids), float("-inf"))
                ids, logits = torch.cat([ids, routed_ids]), torch.cat([logits, routed_logits], dim=-1)
        return ids, self.softcap(logits)

    def softcap(self, logits: torch.Tensor) -> torch.Tensor:
        """The drafter architecture's final-logit softcapping (Gemma), or the logits unchanged."""
        if self.logit_softcap is None:
            return logits
        return torch.tanh(logits / self.logit_softcap) * self.logit_softcap

    @torch.no_grad()
    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """This round's drafts: copied from the context when the lookup finds the sequence's last tokens earlier
        (`lookup_tokens`), else drafted by the drafter over its shortlist; as many as the draft schedule says.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence so far.

        Returns:
            `torch.LongTensor` of shape `(1, sequence_length + candidate_length)`: the sequence and its drafts, and
            `torch.FloatTensor` of shape `(1, candidate_length, vocab_size)`: the (processed) draft logits, -inf
            outside the shortlist, or `None` when no token can be drafted.
        """
        start = time.perf_counter()
        input_ids = input_ids.to(self.device)
        self._steps = []  # no stale ranks if this round drafts nothing
        cur_len = input_ids.shape[1]
        room = self.main_model_max_length - cur_len - 1
        if room <= 0:
            self._handed_over, self.lookup_round = None, False
            return input_ids, None
        copied = []
        if self.lookup is not None:
            self.lookup.extend(input_ids[0])
            copied = self.lookup.propose(min(self.lookup_length, room))
            if copied and self.cost is not None:
                copied = copied[: self.cost.choose("lookup", len(copied))]
        self.lookup_round = bool(copied)
        if copied:  # context lookup found a continuation: no drafter step this round
            sequence = torch.cat([input_ids, input_ids.new_tensor(copied)[None, :]], dim=-1)
            candidate_logits = None  # transformers then checks each draft against the target's own choice
            self.stats.lookup_rounds += 1
        else:
            if self.cost is None:
                length = self.num_assistant_tokens
            else:
                upper = self.evospec_config.max_draft_tokens
                length = self.cost.choose("drafter", upper, start=self.num_assistant_tokens)
            sequence, candidate_logits = self._draft(input_ids, min(int(length), room))
        self._round_draft_seconds = time.perf_counter() - start
        self.stats.draft_seconds += self._round_draft_seconds
        if self.learner is not None:
            learn_start = time.perf_counter()
            self.learner.start()  # a due update runs now, or in the background while the target verifies
            self.stats.learn_seconds += time.perf_counter() - learn_start
        self._handed_over = time.perf_counter()
        return sequence, candidate_logits

    def _draft(self, input_ids: torch.LongTensor, num_drafts: int) -> tuple[torch.LongTensor, torch.Tensor]:
        """Runs the drafter for `num_drafts` tokens (fewer with `confidence_threshold`) over the shortlist."""
        if self.observes_context:
            if self.retrieval is not None:  # retrieved first: the real context tokens stay the most recently seen
                self.shortlist.observe(self.retrieval.retrieve(input_ids[0], self.num_observed))
            self.shortlist.observe(input_ids[0, self.num_observed :])
            self.num_observed = input_ids.shape[1]

        feed = self._rewind_cache(input_ids)
        sequence = input_ids
        steps = []  # (column token ids or None, logits) per drafted token
        threshold = self.evospec_config.confidence_threshold
        for _ in range(num_drafts):
            hidden = self.drafter_body(input_ids=feed, past_key_values=self.cache, use_cache=True).last_hidden_state
            head_start = time.perf_counter()
            ids, logits = self.draft_logits(hidden[:, -1])
            self.stats.head_seconds += time.perf_counter() - head_start
            if self.greedy_fast_path:
                choice = logits.argmax(dim=-1)
                token = choice if ids is None else ids[choice]
            else:
                # the draft distribution q that speculative sampling needs: processed exactly as the target's
                full = logits if ids is None else expand_to_vocab(ids, logits, self.vocab_size)
                ids, logits = None, self.logits_processor(sequence, full)
                if self.do_sample:
                    choice = token = torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(1)
                else:
                    choice = token = logits.argmax(dim=-1)
            steps.append((ids, logits))
            sequence = torch.cat([sequence, token[:, None]], dim=-1)
            feed = token[:, None]
            if threshold is not None and logits.softmax(dim=-1)[0, choice[0]] < threshold:
                break
        self._steps = steps
        self.stats.head_steps += len(steps)
        return sequence, self._candidate_logits(steps)

    def _candidate_logits(self, steps) -> torch.Tensor:
        """`(1, num_steps, vocab_size)` from per-step (ids, logits): one -inf fill per round, not per token."""
        if all(ids is None for ids, _ in steps):
            return torch.stack([logits for _, logits in steps], dim=1)
        first = steps[0][0]
        if all(ids.data_ptr() == first.data_ptr() and ids.numel() == first.numel() for ids, _ in steps):
            # the same slots all round (no router): one batched copy
            return expand_to_vocab(steps[0][0], torch.stack([logits for _, logits in steps], dim=1), self.vocab_size)
        out = steps[0][1].new_full((1, len(steps), self.vocab_size), float("-inf"))
        for i, (ids, logits) in enumerate(steps):
            out[:, i].index_copy_(-1, ids, logits)
        return out

    def _rewind_cache(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Drops the drafter's KV entries past the verified prefix; returns the tokens it has yet to read.

        After a round the sequence is `prefix + accepted drafts + one target token`. The cache holds the prefix and
        every draft fed back in, so its first `len(sequence) - 1` entries (at most) are still valid. After an online
        update changed the drafter's weights (with `refresh_cache`), none is: the drafter re-reads the sequence.
        """
        if self.learner is not None and self.learner.config.refresh_cache:
            if self.learner.weights_version != self._cache_weights:
                self.cache, self._cache_weights = self._new_cache(), self.learner.weights_version
        cached = self.cache.get_seq_length()
        keep = min(cached, input_ids.shape[1] - 1)
        if cached > 0:
            self.cache.crop(keep - cached)  # non-positive: how many entries to drop
        return input_ids[:, keep:]

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, num_matches: int):
        """Adapts the draft length to the last round.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence after verification.
            scores (`torch.FloatTensor` of shape `(1, candidate_length + 1, vocab_size)`): the target's scores.
            num_matches (`int`): how many drafts the target accepted.
        """
        verify_seconds = 0.0 if self._handed_over is None else time.perf_counter() - self._handed_over
        self.stats.verify_seconds += verify_seconds
        num_matches, num_drafted = int(num_matches), scores.shape[1] - 1
        if self.cost is not None and self._handed_over is not None:
            source = "lookup" if self.lookup_round else "drafter"
            timed = verify_seconds if self._prefilled else None
            self.cost.observe(source, num_drafted, num_matches, timed, self._round_draft_seconds)
        self._prefilled = True
        targets = input_ids[0, input_ids.shape[1] - num_matches - 1 :]
        self._count_recall(targets)
        if self.learner is not None:
            learn_start = time.perf_counter()
            self.learner.wait()
            self.learner.record(input_ids[0], scores, num_matches, self._draft_ranks(targets))
            self.stats.learn_seconds += time.perf_counter() - learn_start
        self.stats.rounds += 1
        self.stats.drafted += num_drafted
        self.stats.accepted += num_matches
        self.stats.accepted_per_round.append(num_matches)
        if self.lookup_round:
            self.stats.lookup_drafted += num_drafted
            self.stats.lookup_accepted += num_matches
        if self.evospec_config.draft_schedule == "heuristic":
            # the lookup's length and the drafter's adapt apart: each to its own rounds
            if self.lookup_round:
                self.lookup_length = _next_length(
                    self.lookup_length, num_matches, num_drafted, self.evospec_config.lookup_tokens
                )
            else:
                self.num_assistant_tokens = _next_length(
                    self.num_assistant_tokens, num_matches, num_drafted, self.evospec_config.max_draft_tokens
                )

    def _count_recall(self, targets: torch.LongTensor) -> None:
        """Counts, at each verified position that had a draft step, whether the target's token was in the shortlist
        (a membership test over the step's shortlist ids, never over the vocabulary)."""
        checked = min(targets.shape[0], len(self._steps))
        inside = 0
        for (ids, logits), token in zip(self._steps[:checked], targets[:checked]):
            if ids is None:  # full-width logits: -inf outside the shortlist (sampling path), else the whole vocabulary
                inside += bool(logits[0, token] > float("-inf"))
            else:
                inside += bool((ids == token).any())
        self.stats.checked += checked
        self.stats.in_shortlist += inside

    def _draft_ranks(self, targets: torch.LongTensor) -> torch.LongTensor:
        """For each verified position, how many tokens the drafter scored above the target's token (0: it drafted
        it; `OUTSIDE_SHORTLIST`: it could not). Positions past the drafts (the bonus token) count as 0."""
        ranks = torch.zeros(targets.shape[0], dtype=torch.long)
        for i, (ids, logits) in enumerate(self._steps[: targets.shape[0]]):
            if ids is None:
                score = logits[0, targets[i]]
                if score == float("-inf"):  # masked outside the shortlist (the sampling path's full-width logits)
                    ranks[i] = OUTSIDE_SHORTLIST
                    continue
            else:
                column = (ids == targets[i]).nonzero()
                if column.numel() == 0:
                    ranks[i] = OUTSIDE_SHORTLIST
                    continue
                score = logits[0, column[0, 0]]
            ranks[i] = int((logits[0] > score).sum())
        return ranks

    def close(self) -> None:
        """Called once the `generate` call is over: hands the session's adapter back (finishing any update)."""
        if self.session is not None:
            self.session.detach()


def _next_length(length: int, num_matches: int, num_drafted: int, upper: int) -> int:
    """The 'heuristic' draft schedule (transformers' own): +2 after a round whose drafts were all accepted, else -1."""
    return min(length + 2, upper) if num_matches == num_drafted else max(1, length - 1)


def _check_drafter_head(drafter, generator: EvoSpecCandidateGenerator) -> None:
    """Checks once per drafter that its LM head recomputed as evospec_hf does reproduces `drafter(x).logits`.

    evospec_hf recomputes the LM head itself; an architecture that post-processes logits in a way it does not know
    (e.g. a logit scale) would otherwise draft from the wrong distribution without any error.
    """
    if getattr(drafter, "_evospec_head_checked", False):
        return
    probe = torch.arange(1, 4, device=generator.device).clamp(max=generator.head_weight.shape[0] - 1)[None, :]
    with torch.no_grad():
        expected = drafter(input_ids=probe, use_cache=False).logits[0, -1].float()
        hidden = generator.drafter_body(input_ids=probe, use_cache=False).last_hidden_state[0, -1:]
        logits = generator.softcap(F.linear(hidden, generator.head_weight, generator.head_bias).float())[0]
    relative = 1e-3 if hidden.dtype == torch.float32 else 5e-2  # half precision rounds differently
    tolerance = relative * (1.0 + expected.abs().max().item())
    if not torch.allclose(logits, expected, rtol=0, atol=tolerance):
        raise ValueError(
            f"{type(drafter).__name__}'s logits are not `lm_head(base_model(x))` (max difference "
            f"{(logits - expected).abs().max().item():.3g}); evospec_hf cannot shortlist this architecture's head."
        )
    drafter._evospec_head_checked = True
