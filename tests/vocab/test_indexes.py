"""The retrieval indexes of shortlist="evospec" return the tokens they should, and the generator uses them."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from evospec_hf import EvoSpecConfig, EvoSpecSession, evospec_drafting
from evospec_hf.vocab import indexes
from evospec_hf.vocab.indexes import ContextRetrieval, NGramIndex, SemanticIndex

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama


def planted_head(vocab_size=60, dim=16, pairs=((10, 11), (30, 31))):
    """Random rows, except that each planted pair is nearly parallel (and scaled: cosine, not dot product)."""
    head = torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(0))
    for a, b in pairs:
        head[b] = 3.0 * head[a] + 0.01 * torch.randn(dim, generator=torch.Generator().manual_seed(b))
    return head


def test_semantic_index_finds_the_planted_neighbour():
    index = SemanticIndex.build(planted_head(), k=3, progress=False)
    assert index.neighbors.shape == (60, 3) and index.neighbors.dtype == torch.int32
    assert (index.neighbors != torch.arange(60)[:, None]).all()  # never the token itself
    assert index.neighbors[10, 0] == 11 and index.neighbors[11, 0] == 10
    found = index.lookup(torch.tensor([10, 10, 30]), k=1)
    assert found.tolist() == [11, 31]  # distinct, first column only
    assert 10 not in index.lookup(torch.tensor([10])).tolist()
    assert index.lookup(torch.tensor([10]), k=0).numel() == 0


def test_semantic_index_large_vocabularies_use_ivf(monkeypatch):
    monkeypatch.setattr(indexes, "EXACT_SEARCH_MAX_VOCAB", 100)
    pairs = [(t, t + 1) for t in range(0, 1200, 100)]
    index = SemanticIndex.build(planted_head(1200, 16, pairs), k=2, nlist=16, nprobe=4, progress=False)
    assert (index.neighbors != torch.arange(1200)[:, None]).all()
    assert all(int(index.neighbors[a, 0]) == b for a, b in pairs)


def test_semantic_index_save_load_and_errors(tmp_path):
    index = SemanticIndex.build(planted_head(), k=2, progress=False)
    index.save(tmp_path)
    loaded = SemanticIndex.load(tmp_path, vocab_size=60)
    assert torch.equal(loaded.neighbors, index.neighbors) and loaded.k == 2
    with pytest.raises(ValueError, match="vocabulary of 60 tokens"):
        SemanticIndex.load(tmp_path, vocab_size=61)
    with pytest.raises(FileNotFoundError, match="build-semantic-index"):
        SemanticIndex.load(tmp_path / "nowhere")
    path = tmp_path / indexes.SEMANTIC_NAME
    save_file({"neighbors": torch.full((4, 2), 9, dtype=torch.int32)}, path, metadata=dict(
        format=indexes.SEMANTIC_FORMAT, version=indexes.SEMANTIC_VERSION, k="2", vocab_size="4"))  # fmt: skip
    with pytest.raises(ValueError, match="corrupt.*outside"):
        SemanticIndex.load(tmp_path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        SemanticIndex.load(tmp_path)


def test_ngram_index_returns_continuations_most_frequent_first():
    a, b, c, d = 5, 6, 7, 8
    index = NGramIndex(order=2)
    index.update([a, b, c, a, b])
    assert index.continuations([b], limit=1).tolist() == [c]
    index.update([d, a], previous=[a, b])  # continues the text: "b d" is counted across the boundary
    index.update([b, d])
    assert index.continuations([a, b], limit=2).tolist() == [d, c]  # d followed b twice, c once
    # fewer continuations than asked: back off to the most frequent context tokens
    assert index.continuations([c], limit=3).tolist() == [a, b, d]
    assert index.continuations([99], limit=1).tolist() == [a]
    index.reset()
    assert index.continuations([b], limit=4).numel() == 0


def test_trigram_index_uses_two_tokens_of_history():
    index = NGramIndex(order=3)
    index.update([1, 2, 3, 4, 2, 5])
    assert index.continuations([1, 2], limit=1).tolist() == [3]
    assert index.continuations([4, 2], limit=1).tolist() == [5]
    assert index.continuations([9, 2], limit=2).tolist() == [3, 5]  # unseen pair: back off to bigrams


def test_context_retrieval_orders_semantic_then_ngram():
    semantic = SemanticIndex(torch.tensor([[1], [2], [3], [0]]))
    retrieval = ContextRetrieval(semantic, 1, NGramIndex(2), 1)
    sequence = torch.tensor([0, 1, 0])
    assert retrieval.retrieve(sequence, 0).tolist() == [1, 2, 1]  # neighbours of {0, 1}, then what followed 0
    assert ContextRetrieval(semantic, 0, NGramIndex(2), 0).retrieve(sequence, 0).numel() == 0


@pytest.fixture
def router_only_folder(tmp_path):
    """A router folder without a semantic table: shortlist='evospec' builds one in memory."""
    from evospec_hf.vocab.clusters import TokenClusters
    from evospec_hf.vocab.router import ClusterRouter

    TokenClusters.from_assignment(torch.arange(VOCAB_SIZE) % 12).save(tmp_path)
    torch.manual_seed(0)
    ClusterRouter(hidden_size=32, num_clusters=12).save(tmp_path)
    return tmp_path


def test_generator_observes_semantic_neighbours_built_in_memory(router_only_folder, caplog):
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=1)
    prompt_token, planted = 40, 77
    with torch.no_grad():  # `planted` now points where `prompt_token` does; it is never in the text below
        drafter.lm_head.weight[planted] = 2.0 * drafter.lm_head.weight[prompt_token]
    input_ids = torch.tensor([[5, 6, prompt_token, 7]])
    config = EvoSpecConfig(
        shortlist="evospec", shortlist_size=40, context_slots=30, router_path=str(router_only_folder),
        semantic_neighbors=1, ngram_continuations=2, num_draft_tokens=2,
    )  # fmt: skip
    expected = target.generate(input_ids, max_new_tokens=6, do_sample=False)
    session = EvoSpecSession(drafter, online=False)  # keeps the statistical index across calls, learns nothing
    with caplog.at_level(logging.WARNING, logger=indexes.__name__):
        with evospec_drafting(target, config, session=session) as drafting:
            out = target.generate(input_ids, max_new_tokens=6, do_sample=False, assistant_model=session.drafter)
    assert torch.equal(out, expected)
    assert planted not in out[0].tolist()
    assert drafting.generator.drafter.vocabulary.shortlist.contains(torch.tensor([planted])).item()
    assert "built the semantic index of 96 tokens in memory" in caplog.text
    # the session's statistical index saw the whole text, and keeps it after the call
    follows = session.statistical_index(config.ngram_order).continuations([prompt_token], limit=1).tolist()
    assert follows == [7]
