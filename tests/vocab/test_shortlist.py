import pytest
import torch

from evospec_hf import EvoSpecConfig, FrequencyTable
from evospec_hf.ops import sparse_lm_head_reference
from evospec_hf.vocab import Shortlist, build_shortlist, release_shortlist


def make(size=6, fixed=(0, 1), context_slots=4, vocab=50, bias=False):
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, 8, generator=gen)
    b = torch.randn(vocab, generator=gen) if bias else None
    return Shortlist(weight, b, size=size, fixed_ids=torch.tensor(fixed), context_slots=context_slots)


def assert_consistent(shortlist):
    """Slots, the reverse map and the packed rows agree, and logits equal the reference."""
    ids = shortlist.token_ids
    assert ids.unique().numel() == ids.numel()
    assert torch.equal(shortlist.slot_of[ids], torch.arange(ids.numel()))
    assert int((shortlist.slot_of >= 0).sum()) == ids.numel()
    hidden = torch.randn(2, shortlist.weight.shape[1])
    torch.testing.assert_close(
        shortlist.logits(hidden), sparse_lm_head_reference(hidden, shortlist.weight, ids, shortlist.bias)
    )


def test_fixed_ids_come_first_deduplicated_and_truncated():
    shortlist = Shortlist(torch.randn(20, 4), None, size=4, fixed_ids=torch.tensor([2, 2, 7, 3, 9, 11]), context_slots=1)
    assert shortlist.token_ids.tolist() == [2, 7, 3]
    assert len(shortlist) == 3 and shortlist.capacity == 4


def test_observe_fills_free_slots_then_evicts_least_recently_seen():
    shortlist = make()
    shortlist.observe(torch.tensor([5, 6, 5, 7]))  # recency: 6 < 5 < 7
    assert shortlist.token_ids.tolist() == [0, 1, 5, 6, 7]
    shortlist.observe(torch.tensor([8, 9]))  # 8 takes the free slot, 9 evicts 6
    assert set(shortlist.token_ids.tolist()) == {0, 1, 5, 7, 8, 9}
    shortlist.observe(torch.tensor([5, 10]))  # 5 refreshed; 10 evicts 7, now the least recent
    assert set(shortlist.token_ids.tolist()) == {0, 1, 5, 8, 9, 10}
    assert shortlist.contains(torch.tensor([7, 10])).tolist() == [False, True]
    assert_consistent(shortlist)


def test_fixed_tokens_are_never_evicted_and_take_no_context_slot():
    shortlist = make(size=4, fixed=(0, 1), context_slots=2)
    shortlist.observe(torch.tensor([0, 1, 0, 1, 5]))
    assert shortlist.token_ids.tolist() == [0, 1, 5]
    shortlist.observe(torch.tensor(list(range(10, 30))))  # more new tokens than slots: the latest win
    assert shortlist.token_ids.tolist()[:2] == [0, 1]
    assert set(shortlist.token_ids.tolist()[2:]) == {28, 29}
    assert_consistent(shortlist)


@pytest.mark.parametrize("bias", [pytest.param(False, id="no-bias"), pytest.param(True, id="bias")])
def test_random_updates_keep_packed_rows_in_sync(bias):
    shortlist = make(size=12, fixed=(3, 4, 5), context_slots=9, bias=bias)
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        shortlist.observe(torch.randint(0, 50, (int(torch.randint(1, 8, (1,), generator=gen)),), generator=gen))
        assert_consistent(shortlist)
    assert len(shortlist) == 12


def test_expand_is_minus_inf_outside():
    shortlist = make()
    shortlist.observe(torch.tensor([9]))
    full = shortlist.expand(torch.tensor([[1.0, 2.0, 3.0]]))
    assert full.shape == (1, 50)
    assert full[0, [0, 1, 9]].tolist() == [1.0, 2.0, 3.0]
    assert torch.isinf(full).sum() == 47


def test_build_shortlist_modes(static_table_path):
    weight = torch.randn(96, 8)
    special = torch.tensor([2, 0])
    assert build_shortlist(EvoSpecConfig(), weight, None, special, "torch") is None

    table = FrequencyTable.load(static_table_path)
    static = build_shortlist(EvoSpecConfig(shortlist="static", shortlist_size=10), weight, None, special, "torch", table)
    assert static.token_ids[:2].tolist() == [2, 0] and len(static) == 10 and static.capacity == 10

    context = build_shortlist(EvoSpecConfig(shortlist="context", shortlist_size=10), weight, None, special, "torch")
    assert context.token_ids.tolist() == [2, 0] and context.capacity == 10

    union = build_shortlist(
        EvoSpecConfig(shortlist="static+context", shortlist_size=10, context_slots=3), weight, None, special, "torch", table
    )
    assert len(union) == 7 and union.capacity == 10


def test_shortlist_larger_than_vocabulary_is_refused():
    with pytest.raises(ValueError, match="larger than the drafter's vocabulary"):
        build_shortlist(EvoSpecConfig(shortlist="context", shortlist_size=100), torch.randn(96, 8), None, torch.tensor([2]), "torch")


def test_shortlists_are_pooled_per_head_one_call_at_a_time(static_table_path):
    head = torch.nn.Linear(8, 96, bias=False)
    config = EvoSpecConfig(shortlist="static+context", shortlist_size=20, context_slots=5)
    table = FrequencyTable.load(static_table_path)

    def build(cfg=config):
        return build_shortlist(cfg, head.weight.detach(), None, torch.tensor([2]), "torch", table, pool_owner=head)

    first = build()
    fixed = first.token_ids.clone()
    first.observe(torch.tensor([90, 91, 92]))
    concurrent = build()  # a second call while the first holds its shortlist: its own slots
    assert concurrent is not first and torch.equal(concurrent.token_ids, fixed)
    release_shortlist(head, first)
    release_shortlist(head, concurrent)
    second = build()
    assert second in (first, concurrent) and torch.equal(second.token_ids, fixed)  # context emptied, fixed part kept
    assert not second.contains(torch.tensor([90, 91, 92])).any()
    assert_consistent(second)
    release_shortlist(head, second)
    other = build(EvoSpecConfig(shortlist="context", shortlist_size=20))  # other options: built anew
    assert other not in (first, concurrent)
    with torch.no_grad():
        head.weight[fixed[1]] += 1.0  # the weights changed in place (e.g. training): packed rows must follow
    rebuilt = build()
    assert rebuilt not in (first, concurrent)
    assert_consistent(rebuilt)


def test_static_without_a_table_is_refused():
    with pytest.raises(ValueError, match="needs a FrequencyTable"):
        build_shortlist(EvoSpecConfig(shortlist="static", shortlist_size=10), torch.randn(96, 8), None, torch.tensor([2]), "torch")


@pytest.mark.parametrize(
    "shortlist, context_slots, num_fixed, expected",
    [
        ("context", 20, 3, (97, 0)),  # context alone takes every slot the fixed ids leave
        ("static", 20, 90, (0, 0)),
        ("static+context", 20, 90, (20, 0)),
        ("router", 20, 3, (0, 97)),  # the router's clusters take the rest
        ("router+context", 20, 3, (20, 77)),
        ("router+context", 20, 90, (20, 0)),  # nothing left for clusters: never a negative budget
        ("evospec", 30, 2, (30, 68)),  # router+context with retrieval
    ],
)
def test_slot_layout_shares_the_shortlist_size(shortlist, context_slots, num_fixed, expected):
    from evospec_hf.vocab.shortlist import slot_layout

    config = EvoSpecConfig(shortlist=shortlist, shortlist_size=100, context_slots=context_slots)
    assert slot_layout(config, num_fixed) == expected
