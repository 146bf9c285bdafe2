"""Continuation data: the loader round-trips what a writer wrote, the writer resumes, and left-padded batches give
the same greedy tokens as one prompt at a time. Tiny models from configs and a byte tokenizer; nothing downloads."""

import importlib
import json
import sys

import pytest
import torch
from transformers import ByT5Tokenizer

from evospec_hf.data import mixture
from evospec_hf.data.continuations import (
    META_FILE,
    ROWS_FILE,
    ContinuationConfig,
    Prompt,
    check_batching,
    continuation_chunks,
    greedy_continuations,
    load_continuations,
    select_prompts,
    write_continuations,
)
from evospec_hf.data.corpora import _split_of
from evospec_hf.data.mixture import Document
from tests.conftest import tiny_gemma3, tiny_llama

VOCAB = 384  # ByT5: 3 special tokens, 256 bytes, 125 extra ids
TEXTS = [
    "Hello there, how are you today?",
    "Hi",
    "A longer prompt that needs many more tokens than the others",
    "x = 1",
]


@pytest.fixture(scope="module")
def tokenizer():
    return ByT5Tokenizer()


def ids_of(tokenizer, text):
    return tuple(tokenizer(text, add_special_tokens=False)["input_ids"])


def fake_rows():
    """Rows as a writer makes them, for a loader test that needs no model."""
    return [
        {"id": "code:a", "kind": "code", "split": "train", "prompt": "def f(", "continuation": "x):",
         "prompt_ids": [2, 10, 11], "continuation_ids": [12, 13, 1], "finished": True},
        {"id": "qa:b", "kind": "qa", "split": "train", "prompt": "Q: why?\nA:", "continuation": " because",
         "prompt_ids": [2, 20], "continuation_ids": [21, 22, 23], "finished": False},
        {"id": "qa:c", "kind": "qa", "split": "heldout", "prompt": "Q: who?\nA:", "continuation": " me",
         "prompt_ids": [2, 30], "continuation_ids": [31], "finished": False},
    ]  # fmt: skip


def write_fake(folder, rows, tail=""):
    folder.mkdir(exist_ok=True)
    (folder / META_FILE).write_text(json.dumps(ContinuationConfig(target="fake", per_kind=2).to_dict()))
    (folder / ROWS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


# ------------------------------------------------------------------------------------------------ loader
def test_loader_round_trips_rows(tmp_path):
    rows = fake_rows()
    write_fake(tmp_path, rows)
    loaded = load_continuations(tmp_path)
    assert loaded.to_list() == rows
    assert load_continuations(tmp_path, kinds=["qa"])["id"] == ["qa:b", "qa:c"]


def test_loader_skips_a_cut_line_and_repeated_ids(tmp_path):
    rows = fake_rows()
    write_fake(tmp_path, rows + [dict(rows[0], continuation="again")], tail='{"id": "cut", "kind": "co')
    loaded = load_continuations(tmp_path)
    assert loaded["id"] == ["code:a", "qa:b", "qa:c"] and loaded[0]["continuation"] == "x):"


def test_chunks_are_prompt_then_continuation_of_the_train_split(tmp_path):
    write_fake(tmp_path, fake_rows())
    chunks = continuation_chunks(tmp_path)
    assert [(k, c.tolist()) for k, c in chunks] == [("code", [2, 10, 11, 12, 13, 1]), ("qa", [2, 20, 21, 22, 23])]
    assert [c.tolist() for _, c in continuation_chunks(tmp_path, split="heldout")] == [[2, 30, 31]]


def test_loader_names_the_script_when_the_folder_is_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="evospec-hf continuations"):
        load_continuations(tmp_path)


# ------------------------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3-sliding-window-4"])
def test_left_padded_batches_match_one_prompt_at_a_time(make, tokenizer):
    model = make(0, vocab_size=VOCAB)
    prompts = [ids_of(tokenizer, t) for t in TEXTS]  # lengths 2 to 59: up to 57 pads
    assert check_batching(model, tokenizer, prompts, max_new_tokens=12) == []
    together = greedy_continuations(model, tokenizer, prompts, 12)
    assert all(len(ids) == 12 for ids in together)  # no EOS among them: nothing cut


def test_continuations_stop_after_eos(tokenizer):
    model = tiny_llama(0, vocab_size=VOCAB)
    prompts = [ids_of(tokenizer, t) for t in TEXTS[:2]]
    plain = greedy_continuations(model, tokenizer, prompts, 12)
    model.generation_config.eos_token_id = plain[0][3]  # the 4th token of the first row ends it
    cut = greedy_continuations(model, tokenizer, prompts, 12)
    stop = plain[0].index(plain[0][3])
    assert cut[0] == plain[0][: stop + 1]
    assert all(tokenizer.pad_token_id not in ids[:-1] or ids == plain[1] for ids in cut)


def _prompts(tokenizer):
    return [Prompt(f"doc:{i}", "qa", "train", ids_of(tokenizer, t)) for i, t in enumerate(TEXTS)]


def test_writer_resumes_and_refuses_another_config(tmp_path, tokenizer):
    model = tiny_gemma3(0, vocab_size=VOCAB)
    config = ContinuationConfig(target="tiny", per_kind=4, max_new_tokens=6, kinds=("qa",))
    prompts = _prompts(tokenizer)
    first = write_continuations(model, tokenizer, config, tmp_path, batch_size=3, prompts=prompts, progress=False)
    assert first["written"] == 4 and first["skipped"] == 0
    rows = load_continuations(tmp_path)
    alone = {p.id: greedy_continuations(model, tokenizer, [p.input_ids], 6)[0] for p in prompts}
    assert {r["id"]: r["continuation_ids"] for r in rows} == alone
    assert all(r["prompt_ids"] == list(p.input_ids) for p in prompts for r in rows if r["id"] == p.id)

    # an interrupted run: the last row is lost; resuming writes that one only
    lines = (tmp_path / ROWS_FILE).read_text().splitlines(keepends=True)
    (tmp_path / ROWS_FILE).write_text("".join(lines[:-1]))
    again = write_continuations(model, tokenizer, config, tmp_path, batch_size=3, prompts=prompts, progress=False)
    assert again["written"] == 1 and again["skipped"] == 3
    assert sorted(load_continuations(tmp_path)["id"]) == sorted(alone)

    other = ContinuationConfig(target="tiny", per_kind=4, max_new_tokens=7, kinds=("qa",))
    with pytest.raises(ValueError, match="max_new_tokens"):
        write_continuations(model, tokenizer, other, tmp_path, prompts=prompts, progress=False)


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="prompt_tokens"):
        ContinuationConfig(prompt_tokens=0)
    with pytest.raises(ValueError, match="per_kind"):
        ContinuationConfig(per_kind=True)  # a bool is not a count
    with pytest.raises(ValueError, match="split"):
        ContinuationConfig(split="test")
    with pytest.raises(ValueError, match="kinds"):
        ContinuationConfig(kinds=("poetry",))
    with pytest.raises(ValueError, match="format version 99"):
        ContinuationConfig.from_dict({"format_version": 99})  # the first layout's field, read as the version


# ------------------------------------------------------------------------------------------------ prompts
def _docs(kind, texts, prompt_ends):
    made, i = [], 0
    while len(made) < len(texts):
        if _split_of(f"src-{i}") == "train":
            made.append(Document(f"{kind}:{i}", kind, f"src-{i}", texts[len(made)], prompt_ends[len(made)]))
        i += 1
    return tuple(made)


def test_prompts_end_where_a_templated_answer_starts(monkeypatch, tokenizer):
    qa_text = "Question: What is a pecan?\nAnswer: A nut."
    monkeypatch.setitem(mixture._complete, "qa", _docs("qa", [qa_text], [qa_text.index(" A nut")]))
    monkeypatch.setitem(mixture._complete, "prose", _docs("prose", ["x" * 100, "too short"], [-1, -1]))
    config = ContinuationConfig(per_kind=5, prompt_tokens=16, kinds=("qa", "prose"))
    prompts = {p.kind: p for p in select_prompts(tokenizer, config)}
    # the question's last 16 tokens, up to "Answer:"; plain text: its first 16; the short text is passed over
    assert tokenizer.decode(prompts["qa"].input_ids) == "a pecan?\nAnswer:"
    assert tokenizer.decode(prompts["prose"].input_ids) == "x" * 16
    assert len(select_prompts(tokenizer, config)) == 2


# ------------------------------------------------------------------------------------------------ the script
@pytest.fixture
def script(monkeypatch, tmp_path, tokenizer):
    """evospec-hf continuations, loaded as a module, with a tiny target and five plain-text documents;
    argv asks for 4 prompts of 24 tokens, 5 new tokens each, in batches of 3, written to tmp_path."""
    import evospec_hf

    texts = [f"Some plain text number {i} " * (i + 1) for i in range(5)]
    monkeypatch.setitem(mixture._complete, "prose", _docs("prose", texts, [-1] * 5))
    monkeypatch.setattr(evospec_hf, "load_target", lambda name: (tiny_llama(0, vocab_size=VOCAB), tokenizer))
    module = importlib.import_module("evospec_hf.commands.continuations")
    argv = ["x", "--target", "tiny", "--out", str(tmp_path), "--kinds", "prose", "--per-kind", "4",
            "--prompt-tokens", "24", "--max-new-tokens", "5", "--batch-size", "3"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    return module


def test_script_stops_when_batching_changes_the_output(script, monkeypatch, tmp_path):
    differs = [{"index": 0, "first_difference": 2, "batched": [1], "alone": [2]}]
    monkeypatch.setattr(script, "check_batching", lambda *args: differs)
    with pytest.raises(SystemExit, match="differs"):
        script.main()
    assert not (tmp_path / ROWS_FILE).exists()


def test_script_checks_batching_then_writes(script, tmp_path, capsys):
    script.main()
    assert "batched == unbatched" in capsys.readouterr().out
    rows = load_continuations(tmp_path)
    assert len(rows) == 4 and all(len(r["prompt_ids"]) == 24 and len(r["continuation_ids"]) == 5 for r in rows)
    script.main()  # resumes: nothing left to write
    assert "0 written, 4 already there" in capsys.readouterr().out
    assert torch.equal(continuation_chunks(tmp_path)[0][1][:24], torch.tensor(rows[0]["prompt_ids"]))
