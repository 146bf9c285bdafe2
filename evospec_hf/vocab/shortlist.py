"""The drafter's live vocabulary shortlist: which token ids it may propose, and their LM-head logits.

This is where a token's place in the shortlist is decided. The shortlist is a fixed number of *slots*:

    [ always-in ids (EOS, pad) | static ids (most frequent first) | context slots (least recently seen evicted) ]
      fixed for the whole generation                              | filled by `observe()` as the text grows

Slot order is logit order: `logits(hidden)[:, j]` is the logit of token `token_ids[j]`. The fixed part is written
once; a context token entering the shortlist writes one slot. So a draft step never touches the full vocabulary:
  * torch backend: the LM-head rows of the slots are kept packed (`(slots, hidden)`), a step is one small matmul,
    and a slot change copies one row;
  * triton backend: the kernel reads the rows in place from the full matrix by token id; a slot change writes one id.
"""

from __future__ import annotations

import collections
import threading
import weakref

import torch

from ..ops import packed_lm_head

# the rank of a target token the drafter could not propose (outside its shortlist): what a round reports for it
# (`generation.rounds.Draft.ranks`) and what the online learner reads (`evolve.online`)
OUTSIDE_SHORTLIST = 1 << 30


class Shortlist:
    """Token-id slots of the drafter's shortlist and the LM head restricted to them.

    Args:
        lm_head_weight: `(vocab_size, hidden_size)` drafter LM-head matrix (not copied).
        lm_head_bias: optional `(vocab_size,)` bias.
        size: total number of slots.
        fixed_ids: `(n,)` ids always in the shortlist, in priority order (special tokens first, then the static
            list); truncated to `size - context_slots`.
        context_slots: slots for tokens passed to `observe()`; 0 disables the context source.
        backend: 'torch' (packed rows) or 'triton' (in-place kernel).
    """

    def __init__(
        self,
        lm_head_weight: torch.Tensor,
        lm_head_bias: torch.Tensor | None,
        size: int,
        fixed_ids: torch.Tensor,
        context_slots: int = 0,
        backend: str = "torch",
    ):
        vocab_size = lm_head_weight.shape[0]
        if size > vocab_size:
            raise ValueError(f"`shortlist_size` ({size}) is larger than the drafter's vocabulary ({vocab_size}).")
        if context_slots > size:
            raise ValueError(f"`context_slots` ({context_slots}) is larger than `shortlist_size` ({size}).")
        device = lm_head_weight.device
        self.weight = lm_head_weight
        self.bias = lm_head_bias
        self.vocab_size = vocab_size
        self.backend = backend

        fixed_ids = _unique_in_order(fixed_ids.to(device=device, dtype=torch.long))[: size - context_slots]
        self.num_fixed = fixed_ids.numel()
        self.capacity = self.num_fixed + context_slots
        # slot -> token id; only the first `num_active` slots are in use
        self.slot_token_ids = torch.zeros(self.capacity, dtype=torch.long, device=device)
        # token id -> slot, -1 when absent. Full-vocab sized, but only ever indexed at the ids that change.
        self.slot_of = torch.full((vocab_size,), -1, dtype=torch.long, device=device)
        # context slots: when each was last seen (a logical clock), for least-recently-seen eviction
        self.last_seen = torch.zeros(context_slots, dtype=torch.long, device=device)
        self.clock = 0
        self.num_active = 0
        if backend == "torch":
            self.packed_weight = torch.empty((self.capacity, lm_head_weight.shape[1]), dtype=lm_head_weight.dtype, device=device)
            self.packed_bias = None if lm_head_bias is None else torch.empty(self.capacity, dtype=lm_head_bias.dtype, device=device)
        self._write_slots(torch.arange(self.num_fixed, device=device), fixed_ids)
        self.num_active = self.num_fixed

    @property
    def token_ids(self) -> torch.Tensor:
        """`(num_active,)` token id of each slot in use, in logit order."""
        return self.slot_token_ids[: self.num_active]

    def __len__(self) -> int:
        return self.num_active

    def contains(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Boolean tensor shaped like `token_ids`: which ids are in the shortlist."""
        return self.slot_of[token_ids.to(self.slot_of.device)] >= 0

    def observe(self, token_ids: torch.Tensor) -> None:
        """Context source: make the tokens of `token_ids` (1-D, in text order) members, refreshing their recency.

        Ids already in a fixed slot are left alone. New ids take free context slots, then evict the least recently
        seen context tokens. Cost: O(len(token_ids) + context_slots), independent of the vocabulary.
        """
        num_context = self.capacity - self.num_fixed
        if num_context == 0 or token_ids.numel() == 0:
            return
        token_ids = token_ids.to(self.slot_of.device, torch.long).flatten()
        # last occurrence of each distinct id; later tokens are more recent
        uniq, inverse = torch.unique(token_ids, return_inverse=True)
        positions = torch.arange(token_ids.numel(), device=token_ids.device)
        last_pos = torch.zeros(uniq.numel(), dtype=torch.long, device=token_ids.device)
        last_pos.scatter_reduce_(0, inverse, positions, reduce="amax", include_self=False)
        stamps = self.clock + last_pos + 1
        self.clock += token_ids.numel()

        slots = self.slot_of[uniq]
        in_context = slots >= self.num_fixed
        self.last_seen[slots[in_context] - self.num_fixed] = stamps[in_context]

        new = slots < 0
        new_ids, new_stamps = uniq[new], stamps[new]
        if new_ids.numel() == 0:
            return
        if new_ids.numel() > num_context:  # more new tokens than slots: keep the most recent ones
            keep = torch.topk(new_stamps, num_context).indices
            new_ids, new_stamps = new_ids[keep], new_stamps[keep]
        num_take = min(self.capacity - self.num_active, new_ids.numel())
        if num_take:  # free slots first
            free_slots = torch.arange(self.num_active, self.num_active + num_take, device=new_ids.device)
            self._write_slots(free_slots, new_ids[:num_take])
            self.last_seen[free_slots - self.num_fixed] = new_stamps[:num_take]
            self.num_active += num_take
            new_ids, new_stamps = new_ids[num_take:], new_stamps[num_take:]
        if new_ids.numel():  # then evict the least recently seen; every context slot is in use here
            evicted = torch.topk(self.last_seen, new_ids.numel(), largest=False).indices + self.num_fixed
            self.slot_of[self.slot_token_ids[evicted]] = -1
            self._write_slots(evicted, new_ids)
            self.last_seen[evicted - self.num_fixed] = new_stamps

    def _write_slots(self, slots: torch.Tensor, token_ids: torch.Tensor) -> None:
        self.slot_token_ids.index_copy_(0, slots, token_ids)
        self.slot_of.index_copy_(0, token_ids, slots)
        if self.backend == "torch":
            # the only row copies: one per token entering the shortlist (index_copy_: advanced-index assignment
            # is ~25x slower on CPU for thousands of rows)
            self.packed_weight.index_copy_(0, slots, self.weight.index_select(0, token_ids))
            if self.bias is not None:
                self.packed_bias.index_copy_(0, slots, self.bias.index_select(0, token_ids))

    def reset_context(self) -> None:
        """Empties the context slots (a new generation starts); the fixed part and its packed rows are kept."""
        self.slot_of[self.slot_token_ids[self.num_fixed : self.num_active]] = -1
        self.num_active = self.num_fixed
        self.last_seen.zero_()
        self.clock = 0

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """`(num_positions, hidden_size)` -> `(num_positions, num_active)` float32 logits, in slot order."""
        n = self.num_active
        if self.backend == "triton":
            from ..ops.triton_sparse_lm_head import triton_sparse_lm_head

            return triton_sparse_lm_head(hidden, self.weight, self.slot_token_ids[:n], self.bias)
        bias = None if self.bias is None else self.packed_bias[:n]
        return packed_lm_head(hidden, self.packed_weight[:n], bias)

    def expand(self, slot_logits: torch.Tensor) -> torch.Tensor:
        """Full-vocabulary logits: `slot_logits` at the shortlisted ids, -inf elsewhere.

        `(..., num_active) -> (..., vocab_size)`. Equal to `ShortlistLogitsProcessor(self)` applied to the drafter's
        full logits, without computing them. Called once per round (candidate logits) or on the sampling path.
        """
        return expand_to_vocab(self.token_ids, slot_logits, self.vocab_size)


def expand_to_vocab(token_ids: torch.Tensor, logits: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """`(..., n)` logits of `token_ids` -> `(..., vocab_size)`, -inf at every other id.

    An id may appear twice (a router's cluster token that also has a slot: its cluster column is -inf): the larger
    value wins. (`index_copy_` would keep either copy, so a token could lose its logit to the -inf.)"""
    out = logits.new_full((*logits.shape[:-1], vocab_size), float("-inf"))
    index = token_ids.expand(*logits.shape[:-1], token_ids.shape[-1])
    return out.scatter_reduce_(-1, index, logits, reduce="amax")


def _unique_in_order(ids: torch.Tensor) -> torch.Tensor:
    """Distinct ids of a 1-D tensor, in order of first occurrence."""
    uniq, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full((uniq.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    first.scatter_reduce_(0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin")
    return uniq[torch.argsort(first)]


def slot_layout(config, num_fixed: int) -> tuple[int, int]:
    """How `config.shortlist_size` is shared, the one place it is decided: `(context_slots, router_budget)` for a
    shortlist whose fixed ids (special tokens, the static list) number `num_fixed`.

    Context alone takes every slot the fixed ids leave; beside a static list or a router it takes
    `config.context_slots`. The router's clusters take what the fixed ids and the context slots leave, per draft
    step (`RoutedHead`); without a router the budget is 0.
    """
    sources = config.shortlist_sources
    if "context" not in sources:
        context_slots = 0
    elif "static" not in sources and "router" not in sources:
        context_slots = config.shortlist_size - min(num_fixed, config.shortlist_size)
    else:
        context_slots = config.context_slots
    router_budget = max(0, config.shortlist_size - num_fixed - context_slots) if "router" in sources else 0
    return context_slots, router_budget


def build_shortlist(
    config,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None,
    always_ids: torch.Tensor,
    backend: str,
    static_table=None,
    pool_owner: torch.nn.Module | None = None,
) -> Shortlist | None:
    """The shortlist an `EvoSpecConfig` asks for (context slots empty), or None for `shortlist='full'`.

    `always_ids` (EOS, pad) come first; 'static' adds the table's most frequent tokens; 'context' reserves
    `context_slots` slots (all remaining slots when it is the only source). 'static' needs `static_table` (a
    `FrequencyTable`, see `resolve_static_table`).

    With `pool_owner` (the drafter's LM-head module) the shortlist comes from that head's pool: an idle one built
    before for the same options, fixed ids and weights is reused, else a new one is built. Give it back with
    `release_shortlist` when the `generate` call is over. Each call holds its own, so calls running at once on one
    drafter never share context slots.
    """
    sources = config.shortlist_sources
    if not sources:
        return None
    vocab_size = lm_head_weight.shape[0]
    if config.shortlist_size > vocab_size:
        raise ValueError(
            f"`shortlist_size` ({config.shortlist_size}) is larger than the drafter's vocabulary ({vocab_size})."
        )
    always_ids = always_ids.to(torch.long).flatten().cpu()
    table = static_table if "static" in sources else None
    if "static" in sources and (table is None or table.vocab_size != vocab_size):
        raise ValueError(f"shortlist='static' needs a FrequencyTable for a vocabulary of {vocab_size} tokens.")
    fixed = [always_ids] + ([table.top(config.shortlist_size)] if table is not None else [])
    fixed_ids = _unique_in_order(torch.cat(fixed))
    context_slots, router_budget = slot_layout(config, fixed_ids.numel())
    size = config.shortlist_size - router_budget
    if fixed_ids.numel() >= config.shortlist_size and context_slots == 0 and "context" in sources and "router" not in sources:
        raise ValueError(
            f"`shortlist_size` ({config.shortlist_size}) leaves no slot for context tokens after the "
            f"{fixed_ids.numel()} special tokens."
        )
    key = None
    if pool_owner is not None:
        key = (
            size, context_slots, hash(fixed_ids.numpy().tobytes()), fixed_ids.numel(), backend,
            lm_head_weight.data_ptr(), lm_head_weight._version,
            None if lm_head_bias is None else (lm_head_bias.data_ptr(), lm_head_bias._version),
        )  # fmt: skip
        pooled = _POOLS.take(pool_owner, key)
        if pooled is not None:
            pooled.reset_context()
            return pooled
    shortlist = Shortlist(
        lm_head_weight, lm_head_bias, size=size, fixed_ids=fixed_ids, context_slots=context_slots, backend=backend
    )
    shortlist.pool_key = key
    return shortlist


def release_shortlist(pool_owner: torch.nn.Module, shortlist: Shortlist | None) -> None:
    """Gives a shortlist taken with `build_shortlist(..., pool_owner=...)` back to its head's pool."""
    if shortlist is not None and getattr(shortlist, "pool_key", None) is not None:
        _POOLS.give(pool_owner, shortlist)


class _ShortlistPools:
    """Idle shortlists per drafter LM-head module, for later `generate` calls.

    Building a shortlist copies thousands of LM-head rows into a fresh buffer (~200 ms at 16k x 640 on a CPU), so a
    call on a drafter reuses an idle one and only empties its context slots. A shortlist is held by one call at a
    time. At most `max_idle` stay idle per head (each holds `slots x hidden` floats), newest options first; the
    pool goes away with the module.
    """

    def __init__(self, max_idle: int = 4):
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: "weakref.WeakKeyDictionary[torch.nn.Module, collections.OrderedDict]" = weakref.WeakKeyDictionary()

    def take(self, owner: torch.nn.Module, key) -> Shortlist | None:
        with self._lock:
            idle = self._idle.get(owner)
            if not idle or not idle.get(key):
                return None
            idle.move_to_end(key)
            return idle[key].pop()

    def give(self, owner: torch.nn.Module, shortlist: Shortlist) -> None:
        with self._lock:
            idle = self._idle.setdefault(owner, collections.OrderedDict())
            idle.setdefault(shortlist.pool_key, []).append(shortlist)
            idle.move_to_end(shortlist.pool_key)
            while sum(len(v) for v in idle.values()) > self.max_idle:  # drop the least recently used options first
                oldest = next(iter(idle))
                idle[oldest].pop(0)
                if not idle[oldest]:
                    del idle[oldest]


_POOLS = _ShortlistPools()
