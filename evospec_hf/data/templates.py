"""Prompt templates that turn real text into the shapes people send to `generate`: questions and answers, chat
turns, summaries and translations. These documents are **templated**: the words come from a real source
(Wikipedia, the Python standard library, gettext catalogs), the framing ("Question:", "User:") is ours.

Every template returns `(text, prompt_end)`: `text[:prompt_end]` is what a user would send (it ends where the
answer starts), so continuation data can prompt the target with exactly that. The template for a document is
picked by a hash of its id, so the choice is fixed on every machine.

Chat turns use a plain-text layout, the same for every tokenizer:

    User: <message>
    Assistant: <reply>
"""

from __future__ import annotations

import re

from .sources import CodeFunction, WikiPage, stable_hash

USER, ASSISTANT = "User:", "Assistant:"

# a full stop after these is not a sentence end ("St. Petersburg", "c. 1200", "e.g. this")
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:[A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Mt|No|vs|ca|c|e\.g|i\.e|etc|approx|Inc|Ltd|Co|U\.S))\.$"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9À-ÖØ-Þ])")


def sentences(text: str) -> list[str]:
    """Complete sentences of `text`: split after `.`/`!`/`?` (not after common abbreviations); a last piece that
    does not end a sentence (the summaries are cut near 500 characters) is dropped."""
    pieces, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        candidate = text[start : match.start()].strip()
        if _ABBREVIATIONS.search(candidate):
            continue
        pieces.append(text[start : match.end()].strip())
        start = match.end()
    tail = text[start:].strip()
    if tail and tail[-1] in ".!?\"')":
        pieces.append(tail)
    return [p for p in pieces if p]


def _pick(doc_id: str, options):
    return options[stable_hash(doc_id) % len(options)]


def _answer_from(page: WikiPage, count: int) -> str | None:
    found = sentences(page.extract)
    return " ".join(found[:count]) if found else None


def _complete(page: WikiPage) -> str:
    """The lead without its cut-off last sentence."""
    return " ".join(sentences(page.extract))


def _description_sentence(page: WikiPage) -> str | None:
    if not page.description:
        return None
    text = page.description[0].upper() + page.description[1:]
    return text if text[-1] in ".!?" else text + "."


def _question(page: WikiPage) -> str:
    """'What is an artery?', 'Who was Bertolt Brecht?': the subject as the lead itself names it."""
    title = re.sub(r"\s*\([^)]*\)$", "", page.title)  # "Protein (nutrient)" -> "Protein"
    lead = page.extract[: len(title) + 60]
    named = re.match(rf"(The|An|A) ({re.escape(title)})\b", lead, re.IGNORECASE)
    if named:
        subject = f"{named.group(1).lower()} {named.group(2)}"
    elif lead.startswith(title + "s "):  # "Proteins are ..."
        subject = title + "s"
    elif lead.startswith(title):
        subject = title
    elif re.match(rf"{re.escape(title.lower())}\b", lead):
        subject = title.lower()
    else:
        subject = title
    # the lead's own verb: "was" for the dead and the past, "are" for plurals
    verb = next((v for v in ("was", "were", "are", "is") if re.search(rf"\b{v}\b", lead)), "is")
    # people: the topic says so, or the description gives a life span, "(1469–1527)"
    if page.topic == "People" or re.search(r"\((?:born )?\d{3,4}(?:\s*[–-]\s*\d{3,4})?\)", page.description):
        return f"Who {'was' if verb in ('was', 'were') else 'is'} {subject}?"
    return f"What {verb} {subject}?"


def qa(page: WikiPage, doc_id: str):
    """A question about the page's subject and an answer from its lead; or reading comprehension with its
    description as the answer. None when the page has no complete sentence."""
    answer = _answer_from(page, 2)
    if answer is None:
        return None
    question = _question(page)
    style = _pick(doc_id, ("qa", "q-a", "context", "tell"))
    description = _description_sentence(page)
    if style == "context" and description:
        prompt = f"Context: {_complete(page)}\nQuestion: {question} Answer in a few words.\nAnswer:"
        return f"{prompt} {description}", len(prompt)
    if style == "q-a":
        prompt = f"Q: {question}\nA:"
    elif style == "tell":
        prompt = f"Question: Tell me about {page.title}.\nAnswer:"
    else:
        prompt = f"Question: {question}\nAnswer:"
    return f"{prompt} {answer}", len(prompt)


def wiki_chat(page: WikiPage, doc_id: str):
    """One or two chat turns about the page's subject, answered from its lead."""
    found = sentences(page.extract)
    if not found:
        return None
    opener = _pick(
        doc_id,
        (f"Can you tell me about {page.title}?", f"What do you know about {page.title}?",
         f"Explain {page.title} briefly.", f"I keep hearing about {page.title}. What is it?"),
    )  # fmt: skip
    prompt = f"{USER} {opener}\n{ASSISTANT}"
    text = f"{prompt} {' '.join(found[:2])}"
    if len(found) > 2:  # a follow-up turn with the rest of the lead
        follow_up = _pick(doc_id[::-1], ("Tell me more.", "Interesting. What else?", "Go on.", "Anything else?"))
        text += f"\n{USER} {follow_up}\n{ASSISTANT} {' '.join(found[2:])}"
    return text, len(prompt)


def code_chat(function: CodeFunction, doc_id: str):
    """A coding request answered with a standard-library function, or the function explained by its docstring."""
    summary = function.docstring.strip().split("\n\n")[0].replace("\n", " ")
    if _pick(doc_id, ("write", "explain")) == "write":
        prompt = f"{USER} Write a Python function `{function.signature}`. {summary}\n{ASSISTANT}"
        text = f"{prompt} Here is one way, as in the standard library's `{function.module}`:\n```python\n{function.source}\n```"
        return text, len(prompt)
    prompt = f"{USER} What does this function do?\n```python\n{_without_docstring(function.source)}\n```\n{ASSISTANT}"
    return f"{prompt} {function.docstring.strip()}", len(prompt)


def _without_docstring(source: str) -> str:
    return re.sub(r'\n(\s+)(?:[rbuRBU]{0,2})("""|\'\'\')(?:.|\n)*?\2\n', "\n", source, count=1)


def summary(page: WikiPage, doc_id: str):
    """The lead and a short summary of it: its people-written description, or its first sentence."""
    description = _description_sentence(page)
    found = sentences(page.extract)
    style = _pick(doc_id, ("first", "tldr", "short"))
    if style == "first" or not description:
        if len(found) < 2:  # a one-sentence text is its own summary: nothing to learn
            return None
        prompt = f"Summarize in one sentence:\n{_complete(page)}\nSummary:"
        return f"{prompt} {found[0]}", len(prompt)
    if style == "tldr":
        prompt = f"{_complete(page) or page.extract}\n\nTL;DR:"
    else:
        prompt = f"Text: {_complete(page) or page.extract}\nDescribe it in a few words:"
    return f"{prompt} {description}", len(prompt)


def translation(english: str, translated: str, language: str, doc_id: str):
    """An English message and its translation, in one direction or the other."""
    style = _pick(doc_id, ("to", "labels", "from", "to-colon"))
    if style == "labels":
        prompt = f"English: {english}\n{language}:"
        return f"{prompt} {translated}", len(prompt)
    if style == "from":
        prompt = f"Translate from {language} to English:\n{translated}\n"
        return f"{prompt}{english}", len(prompt)
    if style == "to-colon":
        prompt = f"Translate to {language}: {english}\n"
        return f"{prompt}{translated}", len(prompt)
    prompt = f"Translate the following text from English to {language}.\n\n{english}\n\n"
    return f"{prompt}{translated}", len(prompt)
