import pytest
import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.vocab.clusters import TokenClusters, cluster_vocabulary
from evospec_hf.vocab.router import ClusterRouter, RoutedHead, load_routed_head


def test_cluster_sizes_are_bounded_and_cover_the_vocabulary():
    # two tight groups of very different sizes: k-means alone would make one huge cluster
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(1, 16, generator=gen) + 0.01 * torch.randn(900, 16, generator=gen)
    small = torch.randn(100, 16, generator=gen)
    clusters = cluster_vocabulary(torch.cat([big, small]), num_clusters=10, max_cluster_size=150)
    assert clusters.sizes().max() <= 150 and clusters.sizes().min() >= 1
    assert sorted(clusters.order.tolist()) == list(range(1000))
    for c in range(clusters.num_clusters):
        members = clusters.order[clusters.offsets[c] : clusters.offsets[c + 1]]
        assert (clusters.cluster_of[members] == c).all()


def test_empty_clusters_are_dropped():
    clusters = TokenClusters.from_assignment(torch.tensor([5, 5, 9, 2, 9]))
    assert clusters.num_clusters == 3 and clusters.sizes().tolist() == [1, 2, 2]


def test_clusters_round_trip_and_corruption(tmp_path):
    clusters = TokenClusters.from_assignment(torch.tensor([1, 0, 1, 2, 0, 2]))
    clusters.save(tmp_path)
    loaded = TokenClusters.load(tmp_path, vocab_size=6)
    assert torch.equal(loaded.cluster_of, clusters.cluster_of) and torch.equal(loaded.order, clusters.order)
    with pytest.raises(ValueError, match="not 7"):
        TokenClusters.load(tmp_path, vocab_size=7)
    (tmp_path / "evospec_clusters.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        TokenClusters.load(tmp_path)


def expected_clusters(scores: torch.Tensor, sizes: list, budget: int) -> list:
    """The rule, by hand: clusters best first (plain topk over the raw scores) while their tokens fit in `budget`,
    at least one."""
    chosen, used = [], 0
    for c in torch.topk(scores, len(sizes)).indices.tolist():
        if chosen and used + sizes[c] > budget:
            break
        chosen.append(c)
        used += sizes[c]
    return chosen


def test_routed_head_reads_the_selected_clusters_within_budget():
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(60, 8, generator=gen), torch.randn(60, generator=gen)
    # six clusters of different sizes, their tokens scattered over the vocabulary
    sizes = [4, 7, 9, 10, 13, 17]
    membership = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])[torch.randperm(60, generator=gen)]
    clusters = TokenClusters.from_assignment(membership)
    torch.manual_seed(0)
    router = ClusterRouter(8, 6, inner_size=4)
    head = RoutedHead(router, clusters, weight, bias)
    contexts = torch.randn(8, 8, generator=gen)
    with torch.no_grad():
        scores = router(contexts)  # the router's raw scores
    counts = set()
    for hidden, row in zip(contexts, scores):
        hidden = hidden[None]
        for budget in (3, 15, 25, 40, 60):
            wanted = expected_clusters(row, sizes, budget)
            counts.add(len(wanted))
            assert head.select(hidden, budget) == wanted
            allowed = [t for t in range(60) if int(membership[t]) in wanted]
            ids, logits = head.logits(hidden, wanted)
            assert sorted(ids.tolist()) == allowed  # each allowed token once, nothing else
            torch.testing.assert_close(logits, hidden @ weight[ids].T + bias[ids])  # each column its token's row
            held = head.holds(hidden.expand(60, 8), torch.arange(60), budget)
            assert held.tolist() == [t in allowed for t in range(60)]
    assert counts >= {1, 2, 3, 4}  # one cluster (even past the budget), and several


def test_drafters_sharing_a_head_keep_their_routed_heads_and_share_the_sorted_rows(tmp_path):
    """Two drafters of one target share its LM head (a token and a feature drafter), each with its own router:
    switching between them reuses what was built, and one cluster-sorted copy of the head serves both."""
    head = torch.nn.Linear(8, 60, bias=False)
    clusters = TokenClusters.from_assignment(torch.arange(60) % 6)
    folders = []
    for name, seed in [("a", 0), ("b", 1)]:
        folder = tmp_path / name
        folder.mkdir()
        torch.manual_seed(seed)
        ClusterRouter(8, 6).save(folder)
        clusters.save(folder)
        folders.append(folder)
    first = load_routed_head(folders[0], None, head)
    second = load_routed_head(folders[1], None, head)
    assert second is not first and second.sorted_weight is first.sorted_weight
    assert load_routed_head(folders[0], None, head) is first  # not rebuilt after the other drafter ran
    other = tmp_path / "c"
    other.mkdir()
    ClusterRouter(8, 6).save(other)
    TokenClusters.from_assignment((torch.arange(60) + 1) % 6).save(other)  # another order: its own sorted copy
    assert load_routed_head(other, None, head).sorted_weight is not first.sorted_weight


def test_router_round_trip(tmp_path):
    router = ClusterRouter(8, 5, inner_size=3)
    router.save(tmp_path)
    hidden = torch.randn(2, 8)
    torch.testing.assert_close(ClusterRouter.load(tmp_path)(hidden), router(hidden), atol=2e-3, rtol=2e-3)  # fp16 on disk


def test_router_config_rules():
    EvoSpecConfig(shortlist="router+context", shortlist_size=100, context_slots=20)
    with pytest.raises(ValueError, match="'router' combines with 'context' only"):
        EvoSpecConfig(shortlist="router+static", static_shortlist_path="x")
    with pytest.raises(ValueError, match="context_slots"):
        EvoSpecConfig(shortlist="router+context", shortlist_size=10, context_slots=10)


def test_missing_router_is_explained():
    from evospec_hf.vocab.router import resolve_router_folder

    from ..conftest import tiny_llama

    with pytest.raises(FileNotFoundError, match="evospec-hf train-router"):
        resolve_router_folder(None, tiny_llama(seed=0))
