"""The README and `docs/`: every relative link resolves (files and anchors), the generated reference matches the
code, and the pages state what is (no issue or stop numbers, no numbered runs)."""

import re
from pathlib import Path

import pytest

from evospec_hf.commands import write_docs_reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); images are checked the same way below
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors of a markdown page, plus explicit `<a id=...>` ones."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    found = set(re.findall(r'<a id="([^"]+)"', text))
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = LINK.findall(text) + IMAGE.findall(text)
    return [t for t in targets if not re.match(r"[a-z]+:", t)]  # http:, https:, mailto: are not ours


def test_there_are_docs():
    assert (ROOT / "docs" / "index.md").is_file()
    assert len(PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no such anchor)")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_state_what_is(page):
    """No issue or stop numbers and no numbered runs: a page describes the code as it is."""
    text = page.read_text()
    found = re.findall(r"\b(?:[Ii]ssue|[Ss]top) \d+|\bGPU run \d|\brun [12] \(", text)
    assert not found, f"{page.relative_to(ROOT)}: {sorted(set(found))}"


def test_the_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


@pytest.mark.parametrize("name", list(write_docs_reference.PAGES))
def test_the_reference_matches_the_code(name):
    """`docs/reference/` is what `evospec-hf write-docs-reference` writes from the config classes and commands."""
    on_disk = (ROOT / "docs" / "reference" / name).read_text()
    assert on_disk == write_docs_reference.PAGES[name](), (
        f"docs/reference/{name} is stale: run `evospec-hf write-docs-reference`"
    )


def test_every_config_field_has_help_and_a_reference_entry():
    import dataclasses

    from evospec_hf import EvoSpecConfig, OnlineAlignmentConfig

    text = (ROOT / "docs" / "reference" / "config.md").read_text()
    for cls in (EvoSpecConfig, OnlineAlignmentConfig):
        for field in dataclasses.fields(cls):
            assert field.metadata.get("help"), f"{cls.__name__}.{field.name} has no help"
            assert f'<a id="{field.name}"></a>' in text, field.name
