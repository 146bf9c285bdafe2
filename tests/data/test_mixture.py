"""The training mixture: held-out discipline, every kind present, templates well-formed, chunks balanced.

Sources are whatever this machine has; a kind whose source is missing is skipped with the reason (the install
line). Tests that only exercise the logic (chunking, loading) run on synthetic documents put in the cache."""

import itertools
import re
from fractions import Fraction

import pytest
import torch
from transformers import ByT5Tokenizer

from evospec_hf.data import (
    KINDS,
    SourceMissing,
    iter_documents,
    load_domain_corpus,
    load_mixture,
    mixture,
    mixture_chunks,
)
from evospec_hf.data.corpora import _split_of
from evospec_hf.data.math_problems import SYMBOLIC_FAMILIES, WORD_FAMILIES, symbolic_problem, word_problem
from evospec_hf.data.mixture import Document
from evospec_hf.data.templates import sentences


def first_documents(kind, split=None, count=200):
    """The first `count` documents of a kind (lazy: the rest is not built), or a skip naming the missing source."""
    try:
        docs = list(itertools.islice(iter_documents(kind, split), count))
    except SourceMissing as err:
        pytest.skip(f"{kind}: source not installed: {err}")
    if not docs:
        pytest.skip(f"{kind}: no {split or ''} documents on this machine")
    return docs


# ------------------------------------------------------------------------------------------------ splits
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_documents_in_both_splits(kind):
    first_documents(kind, count=1)  # skips if the source is missing; from here on, an empty split is a failure
    for split in ("train", "heldout"):
        doc = next(iter_documents(kind, split), None)
        assert doc is not None, f"{kind} has no {split} document"
        assert doc.kind == kind and doc.split == split and doc.text.strip()


@pytest.mark.parametrize("kind", KINDS)
def test_split_is_decided_by_the_source_and_ids_are_unique(kind):
    docs = first_documents(kind, count=400)
    assert all(doc.split == _split_of(doc.source) for doc in docs)
    assert len({doc.id for doc in docs}) == len(docs)
    train = {d.id for d in first_documents(kind, "train", count=200)}
    heldout = {d.id for d in first_documents(kind, "heldout", count=50)}
    assert not train & heldout


@pytest.mark.parametrize("kind", ["qa", "chat", "summary"])
def test_text_made_from_a_heldout_page_is_heldout(kind):
    """A question, chat or summary made from a held-out Wikipedia page is held out too: training on 'train' never
    shows the page's words in another shape."""
    heldout_pages = set(load_domain_corpus("general", "heldout")["id"])
    docs = [d for d in first_documents(kind, count=3000) if d.source.startswith("wiki:")]
    from_heldout = [d for d in docs if d.source in heldout_pages]
    assert from_heldout, "no document from a held-out page among the first 3000"
    assert all(d.split == "heldout" for d in from_heldout)
    assert all(d.source not in heldout_pages for d in docs if d.split == "train")


def test_prose_and_medical_split_as_the_domain_corpora_do():
    for kind, domain in (("prose", "general"), ("medical", "medical")):
        heldout = set(load_domain_corpus(domain, "heldout", max_docs=300)["id"])
        mixed = {d.id for d in first_documents(kind, "heldout", count=5000) if d.source.startswith("wiki:")}
        assert heldout <= mixed


def test_translation_holds_out_an_english_sentence_in_every_language():
    docs = first_documents("translation", count=20_000)
    split_of_source = {}
    for doc in docs:
        assert split_of_source.setdefault(doc.source, doc.split) == doc.split
    languages_per_source = {}
    for doc in docs:
        languages_per_source.setdefault(doc.source, set()).add(doc.id.split(":")[1])
    assert max(len(v) for v in languages_per_source.values()) > 1, "no English message seen in two languages"


@pytest.mark.parametrize("kind", ["math", "translation", "qa"])
def test_documents_are_deterministic(kind):
    first = [(d.id, d.text, d.prompt_end) for d in itertools.islice(mixture._BUILDERS[kind](), 300)]
    again = [(d.id, d.text, d.prompt_end) for d in itertools.islice(mixture._BUILDERS[kind](), 300)]
    assert first == again


# ------------------------------------------------------------------------------------------------ templates
def test_sentences_keep_abbreviations_and_drop_a_cut_off_tail():
    text = "St. Petersburg was founded c. 1703 by Peter the Great. It is large! Its U.S. twin is Portland. The cit"
    assert sentences(text) == [
        "St. Petersburg was founded c. 1703 by Peter the Great.",
        "It is large!",
        "Its U.S. twin is Portland.",
    ]


PROMPT_ENDS = {
    "qa": ("Answer:", "A:"),
    "chat": ("Assistant:",),
    "summary": ("Summary:", "TL;DR:", "Describe it in a few words:"),
    "translation": (":", "\n"),
    "math": ("Solution:", "Answer:", "Assistant:"),
}


@pytest.mark.parametrize("kind", list(PROMPT_ENDS))
def test_templated_documents_split_into_a_prompt_and_an_answer(kind):
    docs = [d for d in first_documents(kind, count=300) if d.prompt_end >= 0]
    assert docs
    for doc in docs:
        prompt, answer = doc.text[: doc.prompt_end], doc.text[doc.prompt_end :]
        assert prompt.endswith(PROMPT_ENDS[kind]), (doc.id, prompt[-40:])
        assert answer.strip() and len(prompt.strip()) > 3, doc.id


def test_chat_turns_alternate_user_and_assistant():
    for doc in first_documents("chat", count=300):
        speakers = re.findall(r"^(User|Assistant):", doc.text, flags=re.MULTILINE)
        assert speakers[0] == "User" and len(speakers) % 2 == 0, doc.id
        assert all(a != b for a, b in itertools.pairwise(speakers)), doc.id


def test_qa_and_summary_answers_come_from_the_page():
    from evospec_hf.data.sources import wiki_pages

    try:
        pages = {p.key: p for p in itertools.islice(wiki_pages("en"), 400)}
    except SourceMissing as err:
        pytest.skip(str(err))
    for kind in ("qa", "summary"):
        for doc in first_documents(kind, count=400):
            page = pages.get(doc.source)
            if page is None:
                continue
            answer = " ".join(doc.text[doc.prompt_end :].lower().split()).rstrip(".")
            assert answer in " ".join(page.extract.lower().split()) or answer in page.description.lower(), doc.id


def test_translation_pairs_carry_the_english_and_the_translation():
    from evospec_hf.data.sources import TRANSLATION_LANGUAGES

    for doc in first_documents("translation", count=300):
        language = TRANSLATION_LANGUAGES[doc.id.split(":")[1]]
        english = doc.source.removeprefix("msgid:")
        assert language in doc.text and english in doc.text, doc.id
        assert doc.text.count(english) >= 1 and doc.text[doc.prompt_end :].strip()


def _last_number(text):
    return text.split("=")[-1].strip()


@pytest.mark.parametrize("index", range(40))
def test_math_answers_are_right(index):
    question, _, answer = word_problem("order_of_operations", index)
    assert int(answer) == eval(question.removeprefix("Evaluate ").rstrip("."))
    question, _, answer = word_problem("linear_equation", index)
    a, sign, b, c = re.match(r"Solve for x: (-?\d+)x ([+-]) (\d+) = (-?\d+)\.", question).groups()
    x = int(answer.removeprefix("x = "))
    assert int(a) * x + (int(b) if sign == "+" else -int(b)) == int(c)
    question, _, answer = word_problem("fractions", index)
    p, op, q = re.match(r"Compute (\S+) ([+-]) (\S+)\.", question).groups()
    assert Fraction(answer) == (Fraction(p) + Fraction(q) if op == "+" else Fraction(p) - Fraction(q))
    question, _, answer = word_problem("quadratic", index)
    polynomial = re.sub(r"(\d)x", r"\1*x", question.removeprefix("Solve ").removesuffix(" = 0.").replace("^", "**"))
    for root in re.findall(r"x = (-?\d+)", answer):
        assert eval(polynomial, {"x": int(root)}) == 0


def test_every_math_family_makes_a_problem():
    for family in WORD_FAMILIES:
        question, steps, answer = word_problem(family, 3)
        assert question and steps and answer
    for family in SYMBOLIC_FAMILIES:
        question, steps, answer = symbolic_problem(family, 3)
        assert question and answer in steps[-1] + answer


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture
def synthetic(monkeypatch):
    """Replaces three kinds by small synthetic documents (both splits), as if built once already."""
    docs = {}
    for kind, count, length in (("code", 6, 900), ("qa", 40, 30), ("math", 25, 50)):
        made, i = [], 0
        while len(made) < count:
            source = f"{kind}-source-{i}"
            if (_split_of(source) == "heldout") == (len(made) % 3 == 0):  # every third one held out
                made.append(Document(f"{kind}:{i}", kind, source, f"{kind} {i} " + "abcdefghij" * (length // 10)))
            i += 1
        docs[kind] = tuple(made)
        monkeypatch.setitem(mixture._complete, kind, docs[kind])
    return docs


@pytest.fixture(scope="module")
def tokenizer():
    return ByT5Tokenizer()  # bytes as tokens: no files needed


def test_load_mixture_columns_and_split(synthetic):
    train = load_mixture("train", kinds=["code", "qa"])
    assert train.column_names == ["id", "kind", "source", "text", "prompt_end"]
    expected = {d.id for k in ("code", "qa") for d in synthetic[k] if d.split == "train"}
    assert set(train["id"]) == expected
    assert len(load_mixture("heldout", kinds=["math"], max_docs_per_kind=2)) == 2


def test_load_mixture_bad_arguments_and_missing_sources(monkeypatch):
    with pytest.raises(ValueError, match="split"):
        load_mixture("test")
    with pytest.raises(ValueError, match="kind"):
        load_mixture("train", kinds=["poetry"])

    def missing():
        raise SourceMissing("pip install something")
        yield  # a generator, like the real builders

    monkeypatch.setitem(mixture._BUILDERS, "docs", missing)
    with pytest.raises(SourceMissing, match="pip install something"):
        load_mixture("train", kinds=["docs"], max_docs_per_kind=1)


def test_chunks_are_balanced_and_full(synthetic, tokenizer):
    chunks = mixture_chunks(tokenizer, "train", seq_len=32, per_kind=5, seed=0, kinds=["code", "qa", "math"])
    per_kind = {kind: sum(k == kind for k, _ in chunks) for kind in ("code", "qa", "math")}
    assert per_kind == {"code": 5, "qa": 5, "math": 5}
    assert all(c.dtype == torch.long and c.shape == (32,) for _, c in chunks)


def test_chunks_pack_short_documents_and_cap_long_ones(synthetic, tokenizer):
    # 'qa' documents are ~40 bytes: a chunk of 64 holds pieces of two or more of them
    chunks = mixture_chunks(tokenizer, "train", seq_len=64, per_kind=3, seed=0, kinds=["qa"])
    text = tokenizer.decode(chunks[0][1])
    assert len(re.findall(r"qa \d+ ", text)) >= 2
    # 'code' has 4-5 train documents of ~900 bytes; at most 2 chunks of 64 bytes may come from each
    with pytest.warns(UserWarning, match="'code' has only"):
        chunks = mixture_chunks(
            tokenizer, "train", seq_len=64, per_kind=100, seed=0, kinds=["code"], max_chunks_per_doc=2
        )
    train_code = [d for d in synthetic["code"] if d.split == "train"]
    assert len(chunks) == 2 * len(train_code)


def test_chunks_are_seeded_and_kinds_independent(synthetic, tokenizer):
    def run(seed, kinds):
        return [(k, c.tolist()) for k, c in mixture_chunks(tokenizer, "train", 32, 4, seed, kinds=kinds)]

    assert run(0, ["qa"]) == run(0, ["qa"])
    assert run(0, ["qa"]) != run(1, ["qa"])
    # adding a kind leaves the chunks of the others as they were
    assert [c for c in run(0, ["code", "qa"]) if c[0] == "qa"] == run(0, ["qa"])


def test_a_kind_with_too_little_text_warns(synthetic, tokenizer):
    with pytest.warns(UserWarning, match="'math' has only"):
        chunks = mixture_chunks(tokenizer, "heldout", seq_len=64, per_kind=1000, seed=0, kinds=["math"])
    assert 0 < len(chunks) < 1000
