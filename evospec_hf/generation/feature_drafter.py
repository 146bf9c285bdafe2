"""`FeatureDrafter`: an EAGLE-style candidate source that drafts from the target's own hidden states.

Every verification runs the target over the round's positions, so its hidden states there come for free: the
generator asks transformers' loop for them (`requires_model_outputs`, `model_kwargs_overrides` with the layers the
drafter reads) and hands each round's new ones to `observe_target`.

At position j the drafter reads `combine(embedding of token j + 1, fuse(target hidden states at j))` and predicts
the hidden state at j + 1, whose LM head (over the step's `DraftVocabulary`) gives token j + 2 (see
`evospec_hf.models.drafter.feature_drafter_from_target`). Its KV cache holds these pairs for the verified
positions, read with the target's true hidden states. Within a round the target has not run yet, so each next pair
reads the drafter's own predicted hidden state instead; those entries are dropped at the next round, when the
target's true ones are known.

After a verification the sequence has `n` tokens and the target has hidden states for the first `n - 1` (the last
token is its own new one, not run yet): the pair that predicts the first draft is `(hidden state n - 2, token
n - 1)`. The call's very first round has no hidden states yet, so it drafts nothing (or lets the context lookup
draft) and the target's first forward reads the prompt.
"""

from __future__ import annotations

import torch

from ..models.drafter import feature_inputs, feature_layers_of, shifted_feature_inputs
from .rounds import Draft
from .token_drafter import DraftLoop


class FeatureDrafter(DraftLoop):
    """Candidate source: a feature drafter (see the module docstring and `DraftLoop` for the arguments)."""

    def __init__(self, drafter, *args, **kwargs):
        super().__init__(drafter, *args, **kwargs)
        self.feature_layers = feature_layers_of(drafter)
        self.features: torch.Tensor | None = None  # (1, n, F): the target's hidden states at positions 0..n-1
        self.fed = 0  # positions whose (true) pair is in the KV cache

    @property
    def model_kwargs_overrides(self) -> dict:
        """What the target's forward must also return: only the hidden states the drafter reads."""
        return {"output_hidden_states": list(self.feature_layers)}

    def observe_target(self, model_outputs, sequence_length: int) -> None:
        """Keeps the hidden states of the positions the target's last forward verified and accepted.

        Args:
            model_outputs: the target's last forward outputs (None before the first); their `hidden_states` cover the
                positions that forward read: the prompt (and any drafts of the first round) the first time, then
                each round's last token and drafts.
            sequence_length: the sequence's length now. The drafter needs the states of all but its last token, so
                it keeps the forward's first ones up to there: the states of rejected drafts are dropped.
        """
        if model_outputs is None:
            return
        states = model_outputs.hidden_states
        new = torch.cat([states[i] for i in self.feature_layers], dim=-1).detach()
        known = 0 if self.features is None else self.features.shape[1]
        new = new[:, : sequence_length - 1 - known]
        self.features = new if self.features is None else torch.cat([self.features, new], dim=1)

    def propose(self, input_ids: torch.LongTensor, limit: int) -> Draft | None:
        """Drafts `limit` tokens after `input_ids` (`(1, seq_len)`), fewer with `confidence_threshold`; None before
        the target's first forward."""
        if self.features is None:
            return None
        known = self.features.shape[1]
        if known != input_ids.shape[1] - 1:
            raise RuntimeError(
                f"the feature drafter has the target's hidden states for {known} positions, but the sequence has "
                f"{input_ids.shape[1]} tokens (expected one more): transformers' loop did not pass the outputs of "
                "every verification."
            )
        self.vocabulary.observe(input_ids[0])
        if self._cache_is_stale():
            self.fed = 0  # learning changed the weights: read every verified position again
        self._crop_cache(self.fed)  # the last round's own-state pairs
        pairs = shifted_feature_inputs(
            self.drafter, input_ids[:, self.fed : known + 1], self.features[:, self.fed : known]
        )
        self.fed = known

        def read(inputs: torch.Tensor) -> torch.Tensor:
            return self.body(inputs_embeds=inputs, past_key_values=self.cache, use_cache=True).last_hidden_state[:, -1]

        def advance(token: torch.LongTensor, hidden: torch.Tensor) -> torch.Tensor:
            return read(feature_inputs(self.drafter, token[:, None], own=hidden[:, None]))

        return self._draft(input_ids, limit, read(pairs), advance)
