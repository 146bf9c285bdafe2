import json
import re

import pytest
import torch

from evospec_hf import FrequencyTable


def test_counts_and_order():
    table = FrequencyTable.from_token_ids([[3, 3, 1, 3], torch.tensor([1, 4])], vocab_size=6)
    assert table.token_ids.tolist() == [3, 1, 4]
    assert table.counts.tolist() == [3, 2, 1]
    assert table.top(2).tolist() == [3, 1]


def test_out_of_range_ids_raise():
    with pytest.raises(ValueError, match="out of range"):
        FrequencyTable.from_token_ids([[0, 7]], vocab_size=6)


def test_save_load_round_trip(tmp_path):
    table = FrequencyTable.from_token_ids([[5, 5, 2]], vocab_size=8, source="unit")
    path = tmp_path / "t.json"
    table.save(path)
    loaded = FrequencyTable.load(path, vocab_size=8)
    assert loaded.token_ids.tolist() == [5, 2] and loaded.source == "unit"


def test_missing_file_says_how_to_build_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="build-static-shortlist"):
        FrequencyTable.load(tmp_path / "nope.json")


def table_json(**changes) -> str:
    """A valid table over 8 tokens (ids 1 and 3), with `changes` applied to its fields."""
    table = {"format": "evospec-frequency-table", "version": 1, "vocab_size": 8, "token_ids": [1, 3], "counts": [2, 1]}
    return json.dumps({**table, **changes})


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("{not json", id="not-json"),
        pytest.param(json.dumps({"format": "other"}), id="wrong-format"),
        pytest.param(
            json.dumps({"format": "evospec-frequency-table", "version": 1, "vocab_size": 4, "token_ids": [1, 9], "counts": [2, 1]}),
            id="id-outside-vocab",
        ),
        pytest.param(
            json.dumps({"format": "evospec-frequency-table", "version": 1, "vocab_size": 4, "token_ids": [1], "counts": [2, 1]}),
            id="length-mismatch",
        ),
        pytest.param(json.dumps({"format": "evospec-frequency-table", "version": 1}), id="missing-keys"),
        # valid JSON that is not an object
        pytest.param("[]", id="json-list"),
        pytest.param('"hello"', id="json-string"),
        pytest.param("3", id="json-number"),
        # numbers that torch.tensor(..., dtype=long) would silently truncate or convert
        pytest.param(table_json(token_ids=[1, 3.7]), id="float-id"),
        pytest.param(table_json(token_ids=[1, 3.0]), id="integral-float-id"),
        pytest.param(table_json(counts=[2, 1.5]), id="float-count"),
        pytest.param(table_json(token_ids=[True, 3]), id="bool-id"),
        pytest.param(table_json(vocab_size=8.5), id="float-vocab-size"),
    ],
)
def test_corrupt_file_raises_naming_the_file(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"static shortlist file '{path}' is corrupt: ")):
        FrequencyTable.load(path)


def test_integer_ids_still_load(tmp_path):
    """The valid twin of the float-id cases above: the same table with integer ids loads."""
    path = tmp_path / "good.json"
    path.write_text(table_json())
    assert FrequencyTable.load(path).token_ids.tolist() == [1, 3]


def test_table_for_another_vocabulary_is_refused(tmp_path):
    path = tmp_path / "t.json"
    FrequencyTable.from_token_ids([[1, 2]], vocab_size=10).save(path)
    with pytest.raises(ValueError, match="built for a vocabulary of 10"):
        FrequencyTable.load(path, vocab_size=12)


def test_build_from_a_datasets_corpus_with_a_local_tokenizer(tmp_path):
    """The script's path end to end: text files -> `datasets` -> tokenizer -> table, offline."""
    from datasets import load_dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from evospec_hf.vocab import build_frequency_table

    vocab = {"[UNK]": 0, "the": 1, "cat": 2, "sat": 3, "mat": 4, "on": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\nthe cat\n\nthe dog\n")
    dataset = load_dataset("text", data_files=str(corpus), split="train", cache_dir=str(tmp_path / "cache"))
    table = build_frequency_table(tokenizer, dataset, batch_size=2, source="unit")
    assert table.vocab_size == 6
    assert table.token_ids.tolist()[:2] == [1, 2]  # 'the' x4, 'cat' x2
    assert dict(zip(table.token_ids.tolist(), table.counts.tolist())) == {1: 4, 2: 2, 3: 1, 5: 1, 4: 1, 0: 1}


def test_a_token_map_loads_as_sglang_loads_it(tmp_path):
    """SGLang's `--speculative-token-map`: a torch file of a plain list of ints, read with weights_only=True."""
    import torch

    from evospec_hf.vocab.frequency import FrequencyTable

    table = FrequencyTable.from_token_ids([[5, 5, 5, 7, 7, 2]], vocab_size=10)
    static = FrequencyTable.from_token_ids([[1, 1, 1, 2, 2, 3, 9]], vocab_size=10)
    ids = table.save_token_map(tmp_path / "hot.pt", size=5, fill=static)
    loaded = torch.load(tmp_path / "hot.pt", weights_only=True)
    assert loaded == ids == [5, 7, 2, 1, 3]  # this table's order, then the static list's without repeats
    assert type(loaded) is list and all(type(t) is int for t in loaded)
    assert table.save_token_map(tmp_path / "two.pt", size=2) == [5, 7]


def test_a_session_exports_the_tokens_of_its_conversation(tmp_path):
    import torch

    from evospec_hf import EvoSpecSession

    from ..conftest import tiny_llama

    session = EvoSpecSession(tiny_llama(seed=1, layers=1), online=False)
    assert session.frequency_table(96).token_ids.numel() == 0  # nothing seen yet
    session.statistical_index(2).update(torch.tensor([4, 9, 9, 9, 4, 30]))
    table = session.frequency_table(96)
    assert table.top(3).tolist() == [9, 4, 30]
    table.save_token_map(tmp_path / "hot.pt", size=3)
    assert torch.load(tmp_path / "hot.pt", weights_only=True) == [9, 4, 30]
