"""Where the drafter runs: the draft loop (`DraftLoop`), and the token-level drafter (`TokenDrafter`).

transformers' `AssistedCandidateGenerator` calls `assistant_model.generate()` every round, paying its whole setup
(config copies, processor and stopping-criteria lists, cache checks) for a handful of tokens. evospec_hf's drafters
run a bare loop over their decoder body instead: each keeps its own KV cache across rounds, crops the entries of
rejected drafts, and computes the LM head only over the step's vocabulary (`evospec_hf.vocab.DraftVocabulary`).

`DraftLoop` is the part both drafters share: from a hidden state, the step's logits, the drafted token (argmax, or
a sample from the processed distribution), the next hidden state, and the round's `Draft`. `TokenDrafter` feeds its
body tokens; the feature drafter (`feature_drafter.py`) feeds it the target's hidden states.
"""

from __future__ import annotations

import time
import weakref

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessorList

from ..ops.softcap import logit_transform, softcap
from ..utils import decoder_body, unwrap_peft
from ..vocab import DraftVocabulary
from ..vocab.shortlist import expand_to_vocab
from .rounds import Draft, DraftStep


class DraftLoop:
    """What every drafter shares: its vocabulary, its KV cache, and the loop from hidden state to drafted tokens.

    Args:
        drafter (`PreTrainedModel`): the drafter, a decoder-only causal LM sharing the target's vocabulary
            (peft-wrapped or not).
        vocabulary (`DraftVocabulary`): what it may propose at each step.
        logits_processor (`LogitsProcessorList`): the target's processors, applied to draft scores when sampling or
            when there are any (the q of speculative sampling must be processed as the target's p).
        do_sample (`bool`): sample drafts (else argmax).
        confidence_threshold (`float`, *optional*): stop a round once the drafter's probability of its own next token
            falls below it.
        weights_version (`Callable[[], int]`, *optional*): changes whenever online learning changed the drafter's
            weights; the KV cache, computed with the old weights, is then dropped.
        needs_logits (`bool`): whether transformers reads the drafts' logits (speculative sampling, or greedy with an
            `assistant_ensemble_weight`); otherwise no vocabulary-sized candidate logits are built at all.
    """

    name = "drafter"

    def __init__(
        self,
        drafter,
        vocabulary: DraftVocabulary,
        logits_processor: LogitsProcessorList,
        do_sample: bool,
        confidence_threshold: float | None = None,
        weights_version=None,
        needs_logits: bool = True,
    ):
        self.drafter = drafter
        self.body = decoder_body(drafter)
        self.vocabulary = vocabulary
        self.logits_processor = logits_processor
        self.do_sample = do_sample
        self.needs_logits = needs_logits
        self.confidence_threshold = confidence_threshold
        # greedy with no processors: argmax over the step's logits, nothing vocabulary-sized per token
        self.greedy_fast_path = not do_sample and len(logits_processor) == 0
        self.weights_version = weights_version
        # `(entropy) -> bool`, set by the generator under `entropy_stop`: whether to propose a step's token
        self.entropy_gate = None
        self.cache = self._new_cache()
        self._cache_weights = weights_version() if weights_version is not None else 0

    def _new_cache(self) -> DynamicCache:
        cache = DynamicCache(config=self.drafter.config)
        # sliding-window layers (e.g. Gemma 3) must keep their past until we crop rejected drafts
        cache.activate_past_recording()
        return cache

    def _cache_is_stale(self) -> bool:
        """Whether online learning changed the weights since the cache was computed (then a new cache is started)."""
        if self.weights_version is None or self.weights_version() == self._cache_weights:
            return False
        self.cache, self._cache_weights = self._new_cache(), self.weights_version()
        return True

    def _crop_cache(self, keep: int) -> None:
        cached = self.cache.get_seq_length()
        if cached > keep:
            self.cache.crop(keep - cached)  # negative: how many entries to drop

    def _draft(self, input_ids: torch.LongTensor, limit: int, hidden: torch.Tensor, advance) -> Draft:
        """Drafts up to `limit` tokens after `input_ids` (`(1, seq_len)`).

        Args:
            hidden: `(1, hidden_size)` the drafter's final hidden state from which the first draft is read.
            advance: `(token (1,), hidden (1, hidden_size)) -> (1, hidden_size)`, the drafter's next hidden state
                once `token` is drafted (called between drafts, not after the last).
        """
        sequence = input_ids
        steps, tokens = [], []
        head_seconds, entropy_stopped = 0.0, False
        for step in range(limit):
            if step:
                hidden = advance(tokens[-1], hidden)
            head_start = time.perf_counter()
            ids, logits = self.vocabulary.logits(hidden)
            head_seconds += time.perf_counter() - head_start
            if self.greedy_fast_path:
                choice = logits.argmax(dim=-1)
                token = choice if ids is None else ids[choice]
            else:
                # the draft distribution q that speculative sampling needs: processed exactly as the target's
                full = logits if ids is None else expand_to_vocab(ids, logits, self.vocabulary.vocab_size)
                ids, logits = None, self.logits_processor(sequence, full)
                if self.do_sample:
                    choice = token = torch.multinomial(logits.softmax(dim=-1), num_samples=1).squeeze(1)
                else:
                    choice = token = logits.argmax(dim=-1)
            entropy = None
            if self.entropy_gate is not None:  # one reduction over the step's vocabulary (the shortlist)
                entropy = float(torch.special.entr(logits.float().softmax(dim=-1)).sum())
                if step and not self.entropy_gate(entropy):
                    entropy_stopped = True  # its token is likely rejected: the round ends before it
                    break
            if not self.greedy_fast_path:
                sequence = torch.cat([sequence, token[:, None]], dim=-1)
            steps.append(DraftStep(ids, logits, hidden, entropy))
            tokens.append(token)
            threshold = self.confidence_threshold
            if threshold is not None and logits.softmax(dim=-1)[0, choice[0]] < threshold:
                break
        drafted = torch.cat(tokens) if tokens else input_ids.new_empty(0)
        logits = self._candidate_logits(steps) if self.needs_logits else None
        return Draft(
            self.name, drafted, logits, steps, self.vocabulary, head_seconds=head_seconds,
            entropy_stopped=entropy_stopped, head_steps=len(steps) + entropy_stopped,
        )  # fmt: skip

    def _candidate_logits(self, steps: list) -> torch.Tensor | None:
        """`(1, num_steps, vocab_size)` from the steps' logits: one -inf fill per round, not per token."""
        if not steps:
            return None
        if all(step.ids is None for step in steps):
            return torch.stack([step.logits for step in steps], dim=1)
        first = steps[0].ids
        if all(step.ids.data_ptr() == first.data_ptr() and step.ids.numel() == first.numel() for step in steps):
            # the same columns all round (no router): one batched copy
            stacked = torch.stack([step.logits for step in steps], dim=1)
            return expand_to_vocab(first, stacked, self.vocabulary.vocab_size)
        vocab_size = self.vocabulary.vocab_size
        return torch.stack([expand_to_vocab(step.ids, step.logits, vocab_size) for step in steps], dim=1)

    def close(self) -> None:
        self.vocabulary.close()


class TokenDrafter(DraftLoop):
    """Candidate source: a small causal LM reading the sequence's tokens, as the target does (see `DraftLoop`)."""

    def propose(self, input_ids: torch.LongTensor, limit: int) -> Draft:
        """Drafts `limit` tokens after `input_ids` (`(1, seq_len)`), fewer with `confidence_threshold`."""
        self.vocabulary.observe(input_ids[0])
        feed = self._rewind_cache(input_ids)

        def read(tokens: torch.LongTensor) -> torch.Tensor:
            return self.body(input_ids=tokens, past_key_values=self.cache, use_cache=True).last_hidden_state[:, -1]

        return self._draft(input_ids, limit, read(feed), lambda token, hidden: read(token[:, None]))

    def _rewind_cache(self, input_ids: torch.LongTensor) -> torch.LongTensor:
        """Drops the drafter's KV entries past the verified prefix; returns the tokens it has yet to read.

        After a round the sequence is `prefix + accepted drafts + one target token`. The cache holds the prefix and
        the drafts read after it, so its first `len(sequence) - 1` entries (at most) are still valid. After online
        learning changed the drafter's weights, none is: the drafter re-reads the sequence.
        """
        self._cache_is_stale()
        keep = min(self.cache.get_seq_length(), input_ids.shape[1] - 1)
        self._crop_cache(keep)
        return input_ids[:, keep:]


# drafters whose head was checked (a side table: nothing is written onto the user's model)
_CHECKED_HEADS: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


@torch.no_grad()
def check_drafter_head(drafter) -> None:
    """Checks once per drafter that its LM head recomputed as evospec_hf does reproduces `drafter(x).logits`.

    evospec_hf recomputes the LM head itself (`DraftVocabulary`); a drafter whose forward post-processes logits in a
    way it does not know would otherwise draft from the wrong distribution without any error. What can be seen
    without a forward pass (`support.py`) was refused before this runs; this catches the rest.
    """
    model = unwrap_peft(drafter)
    if model in _CHECKED_HEADS:
        return
    head = drafter.get_output_embeddings()
    bias = None if getattr(head, "bias", None) is None else head.bias
    probe = torch.arange(1, 4, device=head.weight.device).clamp(max=head.weight.shape[0] - 1)[None, :]
    expected = drafter(input_ids=probe, use_cache=False).logits[0, -1].float()
    hidden = decoder_body(model)(input_ids=probe, use_cache=False).last_hidden_state[0, -1:]
    logits = softcap(F.linear(hidden, head.weight, bias).float(), logit_transform(drafter))[0]
    name = f"{model.config.model_type} ({type(model).__name__})"
    if not bool(torch.isfinite(expected).all()):
        raise ValueError(f"the drafter {name} gives non-finite logits (NaN or inf) on a short prompt; check its weights.")
    relative = 1e-3 if hidden.dtype == torch.float32 else 5e-2  # half precision rounds differently
    tolerance = relative * (1.0 + expected.abs().max().item())
    if not torch.allclose(logits, expected, rtol=0, atol=tolerance):
        raise ValueError(
            f"the drafter {name}'s logits are not its LM head over its decoder's output (max difference "
            f"{(logits - expected).abs().max().item():.3g}); evospec_hf cannot shortlist this architecture's head."
        )
    _CHECKED_HEADS.add(model)
