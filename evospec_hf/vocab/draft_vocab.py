"""`DraftVocabulary`: what the drafter may propose at each draft step, and the logits it proposes them with.

This is where a draft step's vocabulary is decided. One object per `generate` call owns every rule of it:

  * the fixed slots (EOS and pad, the static list) and the context slots (`Shortlist`, `shortlist.py`);
  * retrieval (`indexes.py`): semantic neighbours and n-gram continuations that enter the context slots;
  * the observe order: at the start of a round, the retrieved tokens first, then the sequence's new tokens, so the
    real context tokens are the most recently seen and are evicted last;
  * the router (`router.py`): per step, the clusters it picks from the drafter's hidden state, within the budget the
    slots leave (`shortlist_size - slots`);
  * the join of the slots' logits and the clusters' logits (a token in both counts once, in its slot), and the
    drafter architecture's final-logit softcapping.

The candidate generator drafts through `logits`; the recall simulation (`recall.py`) runs the same object through
`observe` and `holds`, so what it measures is what generation does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops.softcap import LogitTransform, logit_transform, softcap
from .frequency import resolve_static_table
from .indexes import ContextRetrieval, NGramIndex, context_retrieval
from .router import RoutedHead, load_routed_head
from .shortlist import Shortlist, build_shortlist, release_shortlist, slot_layout


class DraftVocabulary:
    """The drafter's per-step vocabulary and LM head.

    Args:
        head: the drafter's LM-head module (`nn.Linear`-like, `weight` of shape `(vocab_size, hidden_size)`).
        shortlist: the slots (fixed + context), or None when the drafter may propose every token (`shortlist="full"`).
        routed: the router's head, or None.
        router_budget: tokens per step the router's clusters may add.
        retrieval: semantic and n-gram retrieval into the context slots, or None.
        observes_context: whether the sequence's tokens enter the context slots.
        logit_cap: what the drafter's architecture applies to its head's output (`ops.softcap.LogitTransform`:
            a softcap, a logit scale), or None.
    """

    def __init__(
        self,
        head: torch.nn.Module,
        shortlist: Shortlist | None = None,
        routed: RoutedHead | None = None,
        router_budget: int = 0,
        retrieval: ContextRetrieval | None = None,
        observes_context: bool = False,
        logit_cap: LogitTransform | float | None = None,
    ):
        self.head = head
        self.weight = head.weight.detach()
        self.bias = None if getattr(head, "bias", None) is None else head.bias.detach()
        self.vocab_size = self.weight.shape[0]
        self.shortlist = shortlist
        self.routed = routed
        self.router_budget = router_budget
        self.retrieval = retrieval
        self.observes_context = observes_context
        self.logit_cap = logit_cap
        self.num_observed = 0  # tokens of the sequence already observed

    @classmethod
    def build(
        cls,
        config,
        drafter,
        always_ids: torch.Tensor,
        backend: str = "torch",
        ngram: NGramIndex | None = None,
        static_table=None,
        pooled: bool = True,
    ) -> "DraftVocabulary":
        """The vocabulary an `EvoSpecConfig` describes, for `drafter`.

        Args:
            always_ids: EOS and pad ids, always proposable.
            backend: the shortlist head's backend ('torch' or 'triton', see `ops.resolve_head_backend`).
            ngram: for `shortlist="evospec"`, an n-gram index to keep using (an `EvoSpecSession`'s); None: a new one.
            static_table: a `FrequencyTable` for 'static'; None reads `config.static_shortlist_path`, else the
                drafter folder's table.
            pooled: take the shortlist from the drafter head's pool (give it back with `close`); False builds one.
        """
        head = drafter.get_output_embeddings()
        weight = head.weight.detach()
        bias = None if getattr(head, "bias", None) is None else head.bias.detach()
        sources = config.shortlist_sources
        if "static" in sources and static_table is None:
            static_table = resolve_static_table(config.static_shortlist_path, drafter, weight.shape[0])
        shortlist = build_shortlist(
            config, weight, bias, always_ids, backend, static_table=static_table, pool_owner=head if pooled else None
        )
        routed, budget = None, 0
        if "router" in sources:
            routed = load_routed_head(config.router_path, drafter, head)
            budget = slot_layout(config, shortlist.num_fixed)[1]
        return cls(
            head,
            shortlist=shortlist,
            routed=routed,
            router_budget=budget,
            retrieval=context_retrieval(config, drafter, head, ngram),
            observes_context="context" in sources,
            logit_cap=logit_transform(drafter),
        )

    def observe(self, sequence: torch.Tensor) -> None:
        """Reads the sequence's tokens not observed yet (`sequence`: `(seq_len,)`, the whole sequence so far).

        Called at the start of each round. Retrieved tokens enter first, the real context tokens after them.
        """
        if not self.observes_context:
            return
        if self.retrieval is not None:
            self.shortlist.observe(self.retrieval.retrieve(sequence, self.num_observed))
        self.shortlist.observe(sequence[self.num_observed :])
        self.num_observed = sequence.shape[0]

    def logits(self, hidden: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The drafter's softcapped LM-head logits for one position, over this step's vocabulary only.

        Args:
            hidden: `(1, hidden_size)` final hidden state.

        Returns:
            the token id of each logit column (`(n,)`, or None when the columns are the whole vocabulary) and the
            float32 logits `(1, n)`. With a router the columns change at every step: the slots, then the tokens of
            the clusters the router picks (those already in a slot are masked to -inf, not repeated).
        """
        if self.shortlist is None:
            return None, softcap(F.linear(hidden, self.weight, self.bias).float(), self.logit_cap)
        ids, logits = self.shortlist.token_ids, softcap(self.shortlist.logits(hidden), self.logit_cap)
        if self.routed is not None:
            routed_ids, routed_logits = self.routed.logits(hidden, self.routed.select(hidden, self.router_budget))
            # masked after the softcap, which would turn -inf into -cap: a token with a slot is proposed only there
            routed_logits = softcap(routed_logits, self.logit_cap)
            routed_logits = routed_logits.masked_fill(self.shortlist.contains(routed_ids), float("-inf"))
            ids, logits = torch.cat([ids, routed_ids]), torch.cat([logits, routed_logits], dim=-1)
        return ids, logits

    def holds(self, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        """`(T, hidden_size)` hidden states and `(T,)` token ids -> `(T,)` bool: whether each step's vocabulary (the
        slots now, plus the clusters the router picks from that step's hidden state) holds that step's token."""
        if self.shortlist is None:
            return torch.ones(token_ids.shape, dtype=torch.bool, device=token_ids.device)
        inside = self.shortlist.contains(token_ids)
        if self.routed is not None:
            inside = inside | self.routed.holds(hidden, token_ids, self.router_budget).to(inside.device)
        return inside

    def close(self) -> None:
        """Gives the shortlist back to the drafter head's pool (the `generate` call is over: the next call on this
        drafter may take it, so nothing may draft through this object any more)."""
        release_shortlist(self.head, self.shortlist)
