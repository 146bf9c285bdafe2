"""A session's serving export on its own: the conversation's tokens by count, written as SGLang's token map and
read back as SGLang reads it."""

import torch

from evospec_hf import EvoSpecSession, FrequencyTable
from evospec_hf.evolve.export import conversation_table
from evospec_hf.vocab.indexes import NGramIndex

from ..conftest import VOCAB_SIZE, tiny_llama


def test_the_token_map_holds_the_conversations_tokens_most_frequent_first(tmp_path):
    index = NGramIndex(order=2)
    index.update([5, 7, 5, 9])
    index.update([5, 7], previous=[5, 9])  # 5: 3 times, 7: 2, 9: 1
    table = conversation_table(index, vocab_size=12)
    assert table.vocab_size == 12 and table.token_ids.tolist() == [5, 7, 9] and table.counts.tolist() == [3, 2, 1]
    fill = FrequencyTable.from_counts(torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 8, 1]))  # 10, 9, 11
    ids = table.save_token_map(tmp_path / "hot.pt", 5, fill=fill)
    assert ids == torch.load(tmp_path / "hot.pt", weights_only=True) == [5, 7, 9, 10, 11]


def test_no_index_gives_an_empty_table():
    assert conversation_table(None, vocab_size=12).token_ids.tolist() == []


def test_the_session_exports_its_own_index():
    session = EvoSpecSession(tiny_llama(seed=0))
    assert session.frequency_table(VOCAB_SIZE).token_ids.tolist() == []
    session.statistical_index(2).update([4, 4, 6])
    assert session.frequency_table(VOCAB_SIZE).token_ids.tolist() == [4, 6]
    session.reset()
    assert session.frequency_table(VOCAB_SIZE).token_ids.tolist() == []
