"""`EvoSpecCandidateGenerator`: orchestrates one draft-and-verify round for transformers' assisted decoding.

The generator decides nothing itself. Each round it:

1. asks its candidate sources in turn for up to the draft length rule's number of tokens: the context lookup
   (`lookup.py`, copies a continuation seen earlier), then the drafter, which drafts through the `DraftVocabulary`
   of `evospec_hf.vocab`: a token drafter (`token_drafter.py`), or a feature drafter reading the target's hidden
   states (`feature_drafter.py`), which the generator then asks transformers' loop for. A copy goes to the target
   only if the draft length rule prefers it to the drafter's (`schedule.py`: the "cost" rule compares expected
   tokens per second);
2. cuts the drafts where a stopping criterion would fire (`stopping.py`);
3. hands them to transformers, whose loop verifies them with the target over the full vocabulary (with the opt-in,
   LOSSY `lossy_acceptance`, a logits processor of the call accepts drafts close to the target's distribution:
   `logits_process.py`);
4. passes the verified round to the draft length rule (`schedule.py`) and to its observers: the stats
   (`stats.py`) and the session's online learner (`evospec_hf.evolve`).
"""

from __future__ import annotations

import time

import torch
from transformers import LogitsProcessorList
from transformers.generation.candidate_generator import CandidateGenerator
from transformers.generation.logits_process import MinLengthLogitsProcessor

from ..config import EvoSpecConfig
from ..models.drafter import feature_layers_of
from ..ops import logit_transform, resolve_head_backend
from ..vocab import DraftVocabulary
from .feature_drafter import FeatureDrafter
from .logits_process import LossyJSAcceptance
from .lookup import LookupSource
from .rounds import Draft, RoundResult
from .schedule import draft_length_rule
from .stats import DraftStats
from .stopping import StopCheck
from .token_drafter import TokenDrafter, check_drafter_head


class EvoSpecCandidateGenerator(CandidateGenerator):
    """Drafts candidate tokens for transformers' assisted decoding (see the module docstring for a round).

    It subclasses transformers' `CandidateGenerator`, not `AssistedCandidateGenerator`: transformers' loop writes the
    draft length of an `AssistedCandidateGenerator` back into the drafter's `generation_config` when a call ends (with
    `num_assistant_tokens_schedule="heuristic"`), and evospec_hf leaves the user's models as they were.

    Args:
        input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the prompt.
        assistant_model (`PreTrainedModel`): the drafter, a decoder-only causal LM sharing the target's vocabulary.
        generation_config (`GenerationConfig`): the target's prepared generation config.
        evospec_config (`EvoSpecConfig`): drafting options.
        target_vocab_size (`int`): rows of the target's LM head; must equal the drafter's.
        logits_processor (`LogitsProcessorList`, *optional*): the target's processors, applied to draft scores too.
        stats (`DraftStats`, *optional*): filled in as rounds complete.
        session (`EvoSpecSession`, *optional*): learns from every round's verification (online alignment) and
            keeps the statistical index across calls.
        verify_seconds (`dict`, *optional*): with `draft_schedule="cost"`, the target's measured verification
            seconds per draft length, kept across calls.
        stopping_criteria (`StoppingCriteriaList`, *optional*): the call's prepared criteria; drafts are cut where
            one would fire.
        target (`PreTrainedModel`, *optional*): the target, for `intermediate_verifier` (HiSpec).
        in_batch (`bool`): drafting for one row of a batched call (`batched.py`): the loop keeps `verify_seconds`,
            and the "cost" rule may draft nothing in a round.
    """

    def __init__(
        self,
        input_ids: torch.LongTensor,
        assistant_model,
        generation_config,
        evospec_config: EvoSpecConfig,
        target_vocab_size: int,
        logits_processor: LogitsProcessorList | None = None,
        stats: DraftStats | None = None,
        session=None,
        verify_seconds: dict | None = None,
        stopping_criteria=None,
        target=None,
        in_batch: bool = False,
    ):
        _check_pair(input_ids, assistant_model, target_vocab_size)
        self.acceptance = None  # LOSSY acceptance (opt-in): joins the call's own processors, which verify
        if evospec_config.lossy_acceptance is not None:
            if generation_config.do_sample:
                raise ValueError(
                    f"lossy_acceptance={evospec_config.lossy_acceptance!r} is for greedy decoding; with "
                    "do_sample=True speculative sampling already keeps the target's distribution exactly."
                )
            if logits_processor is None:
                raise ValueError("lossy_acceptance needs the call's logits processors (transformers' assisted loop).")
        self.assistant_model = assistant_model
        self.evospec_config = evospec_config
        self.device = assistant_model.device
        self.max_length = generation_config.max_length
        self.stats = stats if stats is not None else DraftStats()
        self.session = session
        self.sources = []
        self._closed = False
        # as transformers' own drafting: no min-length processor on drafts (the target still decides every token)
        processors = [p for p in (logits_processor or []) if not isinstance(p, MinLengthLogitsProcessor)]

        check_drafter_head(assistant_model)  # before anything is taken from a session or a pool
        head = assistant_model.get_output_embeddings()
        learner = None
        if session is not None:
            learner = session.attach(
                assistant_model, head.weight.detach(), _bias(head), logit_transform(assistant_model),
                prompt_length=input_ids.shape[1],
            )
        try:
            ngram = None  # shortlist="evospec": a session keeps its n-gram counts across calls
            if session is not None and evospec_config.uses_retrieval:
                ngram = session.statistical_index(evospec_config.ngram_order)
            backend = resolve_head_backend(evospec_config.head_backend, head.weight.device)
            always_in = _always_in(generation_config)
            vocabulary = DraftVocabulary.build(evospec_config, assistant_model, always_in, backend, ngram)
        except BaseException:
            self.close()  # hands the session's adapter back
            raise
        if evospec_config.lookup_tokens > 0:
            self.sources.append(LookupSource(evospec_config.lookup_max_ngram, evospec_config.lookup_min_ngram))
        do_sample = bool(generation_config.do_sample)
        drafter_kind = FeatureDrafter if feature_layers_of(assistant_model) is not None else TokenDrafter
        self.drafter = drafter_kind(
            assistant_model, vocabulary, LogitsProcessorList(processors), do_sample,
            confidence_threshold=evospec_config.confidence_threshold,
            # a learner's update makes the drafter's KV cache stale (unless the session keeps it on purpose)
            weights_version=(
                (lambda: learner.weights_version) if learner is not None and learner.config.refresh_cache else None
            ),
            # greedy verification compares tokens only, unless an ensemble weight mixes in the drafter's q
            needs_logits=do_sample or generation_config.assistant_ensemble_weight is not None,
        )  # fmt: skip
        self.sources.append(self.drafter)
        if isinstance(self.drafter, FeatureDrafter):
            # transformers' loop then hands `get_candidates` its last forward's outputs, with these hidden states
            self.requires_model_outputs = True
            self.model_kwargs_overrides = self.drafter.model_kwargs_overrides
        self.length = draft_length_rule(evospec_config, verify_seconds, in_batch)
        if evospec_config.entropy_stop:  # the rule decides, token by token, where the drafter's round ends
            self.drafter.entropy_gate = self.length.keep_drafting
        self.stop = StopCheck(stopping_criteria)
        self.verifier = None
        if evospec_config.intermediate_verifier is not None:  # HiSpec: the target's early layers trim the drafts
            try:
                self.verifier = _intermediate_verifier(evospec_config, target, assistant_model, do_sample)
            except BaseException:
                self.close()  # hands the session's adapter back
                raise
        if evospec_config.lossy_acceptance is not None:
            self.acceptance = LossyJSAcceptance(evospec_config.lossy_js_scale, stats=self.stats)
            logits_processor.append(self.acceptance)  # transformers' loop applies it to the target's scores
        self.observers = [self.stats]  # the draft length rule learns from verified rounds only
        if learner is not None:
            feature_drafter = self.drafter if isinstance(self.drafter, FeatureDrafter) else None
            self.observers.append(_LearnerFeedback(learner, self.stats, feature_drafter))
        self._draft: Draft | None = None
        self._handed_over = 0.0
        self._prefill = True  # the first verification also reads the whole prompt

    @torch.no_grad()
    def get_candidates(self, input_ids: torch.LongTensor, **kwargs) -> tuple[torch.LongTensor, torch.Tensor | None]:
        """This round's drafts: from the first source that proposes any (the context lookup, then the drafter), as
        many as the draft length rule allows, cut where a stopping criterion would fire.

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence so far.

        Returns:
            `torch.LongTensor` of shape `(1, sequence_length + candidate_length)`: the sequence and its drafts, and
            `torch.FloatTensor` of shape `(1, candidate_length, vocab_size)`: the (processed) draft logits, -inf
            outside the drafter's vocabulary, or `None` when transformers does not read them (greedy), the drafts
            were copied, or nothing was drafted.
        """
        start = time.perf_counter()
        input_ids = input_ids.to(self.device)
        if self.requires_model_outputs:  # a feature drafter reads the target's hidden states of the last round
            self.drafter.observe_target(kwargs.get("model_outputs"), input_ids.shape[1])
        draft = Draft("", input_ids.new_empty(0))
        room = self.max_length - input_ids.shape[1] - 1  # the target adds one token of its own
        if room > 0:
            declined = None  # a copy the rule declined: still better than nothing if the drafter drafts nothing
            for source in self.sources:
                limit = min(self.length.length(source.name), room)
                proposed = source.propose(input_ids, limit) if limit > 0 else None
                if proposed is None:
                    continue
                if source is self.sources[-1] or self.length.prefer(proposed):
                    draft = proposed
                    break
                declined = proposed
            if len(draft) == 0 and declined is not None:
                draft = declined
            draft = self._cut(input_ids, draft)
        draft.seconds = time.perf_counter() - start
        if self.acceptance is not None:
            self.acceptance.begin(draft, input_ids.shape[1])
        for observer in self.observers:
            observer.handed_over(draft)
        self._draft, self._handed_over = draft, time.perf_counter()
        if len(draft) == 0:
            return input_ids, None
        return torch.cat([input_ids, draft.tokens[None, :]], dim=-1), draft.logits

    def _cut(self, input_ids: torch.LongTensor, draft: Draft) -> Draft:
        """Where a round ends: every cut, in this order, is decided here or named here.

        1. Before drafting, the length limit: the draft length rule's length for the source, and the room left before
           `max_length` (the target adds one token of its own) — `get_candidates` passes it to the source.
        2. While drafting, inside the drafter: `confidence_threshold` and the entropy stop (`entropy_stop`) end the
           drafter's round token by token (`token_drafter.py`, `feature_drafter.py`).
        3. Here: the first position where a stopping criterion would fire (`stopping.py`), so the target never
           verifies past the call's end;
        4. then HiSpec's intermediate verifier keeps the prefix its exit head accepts (`hispec.py`).
        """
        draft = self.stop.trim(input_ids, draft)
        if self.verifier is not None and len(draft):
            began, offered = time.perf_counter(), len(draft)
            draft = draft.truncate(self.verifier.keep(input_ids, draft))
            self.stats.verifier_checked += offered
            self.stats.verifier_removed += offered - len(draft)
            self.stats.verifier_seconds += time.perf_counter() - began
        return draft

    def update_candidate_strategy(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, num_matches: int):
        """Passes the verified round to the draft length rule and the observers (stats, learner).

        Args:
            input_ids (`torch.LongTensor` of shape `(1, sequence_length)`): the sequence after verification.
            scores (`torch.FloatTensor` of shape `(1, candidate_length + 1, vocab_size)`): the target's scores.
            num_matches (`int`): how many drafts the target accepted.
        """
        result = RoundResult(
            self._draft, int(num_matches), input_ids, scores, time.perf_counter() - self._handed_over, self._prefill
        )
        self._prefill = False
        self.length.verified(result)
        for observer in self.observers:
            observer.verified(result)

    def verification_started(self, since: float) -> None:
        """The batched loop (`batched.py`): this row's drafts went to the target at `since` (`time.perf_counter()`),
        after the other rows drafted, not when `get_candidates` returned."""
        self._handed_over = since

    def close(self) -> None:
        """Called once the `generate` call is over: releases the sources' state and hands the session's adapter back
        (finishing any update). Closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            for source in self.sources:
                source.close()
        finally:
            if self.session is not None:
                self.session.detach()


class _LearnerFeedback:
    """Round observer feeding a session's `OnlineAligner`: a due update starts when the drafts go to the target
    (now, or in the background while it verifies), and each verified round is recorded.

    A feature drafter learns from the target's hidden states too, and transformers hands over a verification's
    hidden states only with the next round's `get_candidates`: its rounds are recorded one round late (the call's
    last round is not recorded).
    """

    def __init__(self, aligner, stats: DraftStats, feature_drafter=None):
        self.aligner, self.stats = aligner, stats
        self.feature_drafter = feature_drafter
        self.pending: RoundResult | None = None

    def handed_over(self, draft: Draft) -> None:
        start = time.perf_counter()
        if self.pending is not None:  # the feature drafter now has the last verification's hidden states
            self.aligner.wait()
            self._record(self.pending, self.feature_drafter.features)
            self.pending = None
        self.aligner.start()
        self.stats.learn_seconds += time.perf_counter() - start

    def verified(self, result: RoundResult) -> None:
        if self.feature_drafter is not None:
            self.pending = result
            return
        start = time.perf_counter()
        self.aligner.wait()
        self._record(result)
        self.stats.learn_seconds += time.perf_counter() - start

    def _record(self, result: RoundResult, features=None) -> None:
        ranks = result.draft.ranks(result.targets)
        extra = {} if features is None else {"features": features}  # a feature drafter's window of target states
        copied = result.draft.source == "lookup"
        self.aligner.record(result.input_ids[0], result.scores, result.accepted, ranks, **extra, copied=copied)


def _check_pair(input_ids: torch.LongTensor, drafter, target_vocab_size: int) -> None:
    if input_ids.shape[0] != 1:
        raise ValueError(
            f"EvoSpecCandidateGenerator drafts for one row, but got a batch of {input_ids.shape[0]}. Batches go "
            "through evospec_hf's batched loop (evospec_hf/generation/batched.py), which `generate` and "
            "`custom_generate` choose for them; transformers' own assisted loop takes one row."
        )
    if drafter.config.is_encoder_decoder:
        raise ValueError("evospec_hf needs a decoder-only drafter (a causal LM).")
    head = drafter.get_output_embeddings()
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor) or head.weight.dim() != 2:
        raise ValueError(f"{type(drafter).__name__} has no linear LM head that evospec_hf can shortlist.")
    if head.weight.shape[0] != target_vocab_size:
        raise ValueError(
            f"The drafter's vocabulary ({head.weight.shape[0]} LM-head rows) differs from the target's "
            f"({target_vocab_size}). evospec_hf verifies draft token ids directly, so both must use the same "
            "tokenizer; for drafters with another tokenizer use transformers' `assistant_tokenizer=` without "
            "`evospec_config`."
        )


def _always_in(generation_config) -> torch.Tensor:
    """EOS and pad ids: always proposable."""
    ids = [t for t in (generation_config._eos_token_tensor, generation_config._pad_token_tensor) if t is not None]
    return torch.cat([t.flatten() for t in ids]) if ids else torch.empty(0, dtype=torch.long)


def _intermediate_verifier(config: EvoSpecConfig, target, drafter, do_sample: bool):
    """HiSpec's verifier for this call: the exit head in `config.intermediate_verifier` over the static list's
    `shortlist_size` most frequent tokens."""
    from ..vocab.frequency import resolve_static_table
    from .hispec import IntermediateVerifier, verifier_parts

    if target is None:
        raise ValueError("`intermediate_verifier` needs the target model (evospec_hf's generate hook passes it).")
    vocab_size = target.get_output_embeddings().weight.shape[0]
    needed_by = "`intermediate_verifier` (it verifies over the static list's `shortlist_size` most frequent tokens)"
    table = resolve_static_table(config.static_shortlist_path, drafter, vocab_size, needed_by)
    shortlist = table.top(min(config.shortlist_size, vocab_size))
    return IntermediateVerifier(verifier_parts(target, config.intermediate_verifier, shortlist), do_sample)


def _bias(head) -> torch.Tensor | None:
    return None if getattr(head, "bias", None) is None else head.bias.detach()
