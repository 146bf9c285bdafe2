"""A training mixture of the kinds of text people send to `generate`, built from what is on the machine.

    from evospec_hf.data import load_mixture, mixture_chunks
    train = load_mixture("train")                      # datasets.Dataset: id, kind, source, text, prompt_end
    chunks = mixture_chunks(tokenizer, "train", seq_len=256, per_kind=200, seed=0)

| kind        | what it is                                                                  | real or templated |
|-------------|-----------------------------------------------------------------------------|-------------------|
| code        | Python stdlib source; some C headers, Perl, JavaScript (npm), Vim script    | real              |
| law         | Debian licence texts (as `corpora` 'law')                                   | real              |
| prose       | Wikipedia leads: English non-medical (as `corpora` 'general'), French, Spanish | real           |
| medical     | English Wikipedia leads picked by medical keywords (as `corpora` 'medical') | real              |
| docs        | GNU manuals (`/usr/share/info`): coreutils, grep, sed, gzip, wget, gnupg... | real              |
| qa          | a question on a Wikipedia subject, answered from its lead                   | templated         |
| chat        | `User:`/`Assistant:` turns: Wikipedia subjects; stdlib functions to write or explain | templated |
| math        | generated word problems and sympy-checked calculus with worked steps; sympy's mathematical docstrings | generated / real |
| translation | English <-> 26 languages, from the gettext catalogs of installed Debian packages | real pairs, templated frame |
| summary     | a Wikipedia lead (en, fr, es) and its description or first sentence         | templated         |

**Held out the same way as `corpora`.** Every document has a `source`, the thing its words come from (a file, a
Wikipedia title, an English gettext message), and goes to 'train' or 'heldout' by `corpora._split_of(source)`.
Documents made from one source land in one split whatever their kind, so a model trained on 'train' never saw
a held-out question's page as prose, nor a held-out translation's English sentence in another language. For code,
law, prose (English) and medical, `source` is the `corpora` id, so both APIs split those texts identically.

Templated documents carry `prompt_end`: `text[:prompt_end]` is what a user would send (the question, the request,
the text to translate); it is -1 for plain text.
"""

from __future__ import annotations

import random
import warnings
from dataclasses import dataclass

from . import math_problems, templates
from .corpora import _MEDICAL, SPLITS, _documents, _split_of
from .sources import (
    TRANSLATION_LANGUAGES,
    WIKI_LANGUAGES,
    SourceMissing,
    gettext_pairs,
    info_nodes,
    other_code_files,
    read_text,
    stable_hash,
    stdlib_functions,
    sympy_docstrings,
    wiki_pages,
)

KINDS = ("code", "law", "prose", "medical", "docs", "qa", "chat", "math", "translation", "summary")
TEMPLATED_KINDS = ("qa", "chat", "translation", "summary")

# sizes of the generated and sampled parts (documents); chosen so each kind yields roughly 0.5-3 M Gemma tokens
MATH_WORD_PROBLEMS_PER_FAMILY = 1500
MATH_SYMBOLIC_PER_FAMILY = 400
TRANSLATION_PAIRS_PER_LANGUAGE = 3000
CHAT_CODE_FUNCTIONS = 3000


@dataclass(frozen=True)
class Document:
    """One document of the mixture.

    Attributes:
        id: unique over the whole mixture, stable across machines.
        kind: one of `KINDS`.
        source: what the words come from; decides the split.
        text: the document.
        prompt_end: for templated documents, the character offset where the answer starts; else -1.
    """

    id: str
    kind: str
    source: str
    text: str
    prompt_end: int = -1

    @property
    def split(self) -> str:
        return _split_of(self.source)


def _templated(kind: str, doc_id: str, source: str, made):
    if made is None:
        return None
    text, prompt_end = made
    return Document(doc_id, kind, source, text, prompt_end)


def _code():
    for path, text in _documents("code"):
        yield Document(path, "code", path, text)
    for _language, path in other_code_files():
        text = read_text(path)
        if text and text.strip():
            yield Document(path, "code", path, text)


def _law():
    for path, text in _documents("law"):
        yield Document(path, "law", path, text)


def _prose():
    for lang in WIKI_LANGUAGES:
        for page in wiki_pages(lang):
            # English medical pages are the medical kind, as in corpora; the keyword list is English only
            if lang != "en" or not _MEDICAL.search(page.extract):
                yield Document(page.key, "prose", page.key, page.extract)


def _medical():
    for page in wiki_pages("en"):
        if _MEDICAL.search(page.extract):
            yield Document(page.key, "medical", page.key, page.extract)


def _docs():
    for manual, node, text in info_nodes():
        doc_id = f"info:{manual}:{node}"
        yield Document(doc_id, "docs", doc_id, text)


def _qa():
    for page in wiki_pages("en"):
        doc = _templated("qa", f"qa:{page.key}", page.key, templates.qa(page, f"qa:{page.key}"))
        if doc:
            yield doc


def _chat():
    for page in wiki_pages("en"):
        doc = _templated("chat", f"chat:{page.key}", page.key, templates.wiki_chat(page, f"chat:{page.key}"))
        if doc:
            yield doc
    for function in stdlib_functions(CHAT_CODE_FUNCTIONS):
        doc_id = f"chat:code:{function.path}:{function.line}"
        # the split key is the file: its code and the chat about its functions share a split
        doc = _templated("chat", doc_id, function.path, templates.code_chat(function, doc_id))
        if doc:
            yield doc


def _math():
    pick = templates._pick
    for index in range(MATH_WORD_PROBLEMS_PER_FAMILY):  # families interleaved: any prefix is varied
        for family in math_problems.WORD_FAMILIES:
            doc_id = f"math:{family}:{index}"
            text, prompt_end = math_problems.render(*math_problems.word_problem(family, index), doc_id, pick)
            yield Document(doc_id, "math", doc_id, text, prompt_end)
    for index in range(MATH_SYMBOLIC_PER_FAMILY):
        for family in math_problems.SYMBOLIC_FAMILIES:
            doc_id = f"math:{family}:{index}"
            text, prompt_end = math_problems.render(*math_problems.symbolic_problem(family, index), doc_id, pick)
            yield Document(doc_id, "math", doc_id, text, prompt_end)
    for name, docstring in sympy_docstrings():
        doc_id = f"sympy:{name}"
        yield Document(doc_id, "math", doc_id, docstring)


def _translation():
    for lang, language in TRANSLATION_LANGUAGES.items():
        try:
            pairs = list(gettext_pairs(lang, TRANSLATION_PAIRS_PER_LANGUAGE))
        except SourceMissing:
            continue  # this machine has no catalogs in that language; the others still count
        for catalog, english, translated in pairs:
            # one split per English message, whatever the language: a held-out sentence is unseen in all of them
            source = f"msgid:{english}"
            doc_id = f"translation:{lang}:{stable_hash(english):016x}"
            yield _templated(
                "translation", doc_id, source, templates.translation(english, translated, language, doc_id)
            )


def _summary():
    for lang in WIKI_LANGUAGES:
        for page in wiki_pages(lang):
            doc = _templated(
                "summary", f"summary:{page.key}", page.key, templates.summary(page, f"summary:{page.key}")
            )
            if doc:
                yield doc


_BUILDERS = {
    "code": _code, "law": _law, "prose": _prose, "medical": _medical, "docs": _docs, "qa": _qa, "chat": _chat,
    "math": _math, "translation": _translation, "summary": _summary,
}  # fmt: skip


def _check(kind: str | None = None, split: str | None = None):
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")


def iter_documents(kind: str, split: str | None = None):
    """Yields the `Document`s of one kind (in a fixed order), of one split or of both (`split=None`).

    Lazy: taking the first few is fast. Raises `SourceMissing` if the kind's main source is not installed."""
    _check(kind, split)
    for doc in _complete[kind] if kind in _complete else _BUILDERS[kind]():
        if split is None or doc.split == split:
            yield doc


# whole kinds, once built, are kept for the life of the process: chunking and both splits re-read them
_complete: dict[str, tuple[Document, ...]] = {}


def documents(kind: str, split: str | None = None) -> list[Document]:
    """All documents of one kind (and split), built once per process and kept."""
    _check(kind, split)
    if kind not in _complete:
        _complete[kind] = tuple(_BUILDERS[kind]())
    return [doc for doc in _complete[kind] if split is None or doc.split == split]


def load_mixture(split: str = "train", kinds=None, max_docs_per_kind: int | None = None):
    """The mixture as a `datasets.Dataset` with columns `id`, `kind`, `source`, `text`, `prompt_end`.

    Args:
        split: 'train' or 'heldout'.
        kinds: kinds to include (default: all of `KINDS` whose source is installed; others are skipped with a
            warning). A kind named here whose source is missing raises `SourceMissing`.
        max_docs_per_kind: keep the first N documents of each kind (fast: the rest is not built).
    """
    from datasets import Dataset

    _check(split=split)
    explicit = kinds is not None
    rows = []
    for kind in KINDS if kinds is None else kinds:
        _check(kind)
        try:
            if max_docs_per_kind is None:
                picked = documents(kind, split)
            else:
                picked = []
                for doc in iter_documents(kind, split):
                    if len(picked) >= max_docs_per_kind:
                        break
                    picked.append(doc)
        except SourceMissing as err:
            if explicit:
                raise
            warnings.warn(f"mixture: kind {kind!r} left out: {err}", stacklevel=2)
            continue
        rows += [
            {"id": d.id, "kind": d.kind, "source": d.source, "text": d.text, "prompt_end": d.prompt_end}
            for d in picked
        ]
    if not rows:
        return Dataset.from_dict({"id": [], "kind": [], "source": [], "text": [], "prompt_end": []})
    return Dataset.from_list(rows)


def mixture_chunks(
    tokenizer, split: str, seq_len: int, per_kind: int, seed: int, kinds=None, max_chunks_per_doc: int = 2
):
    """`per_kind` token chunks of exactly `seq_len` from each kind: list of (kind, LongTensor of shape (seq_len,)).

    Balanced: every kind gives the same number of chunks (a kind with too little text in `split` gives what it
    has, with a warning). Per kind, documents are shuffled with `seed` and packed one after the other, each
    starting with BOS when the tokenizer has one, so short documents (questions, translations, problems) fill
    whole chunks; a document gives at most `max_chunks_per_doc` chunks' worth of tokens, so one long source file
    cannot fill a kind. Kinds draw from separate random streams: adding a kind leaves the others' chunks as
    they were.
    """
    import torch

    _check(split=split)
    if seq_len < 2 or per_kind < 0 or max_chunks_per_doc < 1:
        raise ValueError(
            f"need seq_len >= 2, per_kind >= 0, max_chunks_per_doc >= 1; got {seq_len}, {per_kind}, {max_chunks_per_doc}"
        )
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    budget = seq_len * max_chunks_per_doc
    out = []
    for kind in KINDS if kinds is None else kinds:
        _check(kind)
        try:
            docs = documents(kind, split)
        except SourceMissing as err:
            if kinds is not None:
                raise
            warnings.warn(f"mixture_chunks: kind {kind!r} left out: {err}", stacklevel=2)
            continue
        order = list(range(len(docs)))
        random.Random(f"{seed}:{kind}").shuffle(order)
        picked, stream = [], []
        for i in order:
            if len(picked) >= per_kind:
                break
            # cut the text before tokenizing: a long file is read only as far as its budget of tokens
            ids = tokenizer(docs[i].text[: budget * 8], add_special_tokens=False)["input_ids"]
            stream += (bos + ids)[:budget]
            while len(stream) >= seq_len and len(picked) < per_kind:
                picked.append(torch.tensor(stream[:seq_len], dtype=torch.long))
                stream = stream[seq_len:]
        if len(picked) < per_kind:
            warnings.warn(
                f"mixture_chunks: kind {kind!r} has only {len(picked)} chunks of {seq_len} in {split!r}", stacklevel=2
            )
        out += [(kind, chunk) for chunk in picked]
    return out
