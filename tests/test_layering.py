"""Dependencies point one way: each lower layer of evospec_hf imports nothing from the layers above it.

    utils, locks  <  ops  <  vocab  <  generation  <  evolve  <  the package, bench, commands

Every module's imports (relative or absolute, at the top or inside a function) are read with `ast`, without
importing anything. `generation/` gets a session passed in (`generation.session_protocol.SessionProtocol`), and
shared definitions live below both it and `evolve/`: the drafter lock in `locks.py`, `OUTSIDE_SHORTLIST` in
`vocab/shortlist.py`.
"""

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "evospec_hf"

# what each part may import from evospec_hf besides itself ("" is the package's own `__init__`)
ALLOWED = {
    "utils": set(),
    "locks": {"utils"},
    "ops": {"utils"},
    "vocab": {"ops", "utils", "models"},  # models: `vocab/recall.py` reads a drafter's hidden states
    "generation": {"config", "locks", "models", "ops", "utils", "vocab"},
}


def part_of(module: str) -> str:
    """`evospec_hf.vocab.shortlist` -> "vocab"; `evospec_hf` -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every evospec_hf module that `path` imports, relative imports resolved."""
    package = path.relative_to(PACKAGE.parent).parts[:-1]  # ("evospec_hf", "vocab") for vocab/shortlist.py
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            else:
                base = node.module
            # `from evospec_hf import evolve` / `from .. import evolve` import the part itself
            found += [(node.lineno, f"{base}.{alias.name}" if base == "evospec_hf" else base) for alias in node.names]
    return [(line, module) for line, module in found if module == "evospec_hf" or module.startswith("evospec_hf.")]


def modules_of(part: str) -> list[Path]:
    folder = PACKAGE / part
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [PACKAGE / f"{part}.py"]


def forbidden_imports(part: str) -> list[str]:
    allowed = ALLOWED[part] | {part}
    return [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in modules_of(part)
        for line, module in imported_modules(path)
        if part_of(module) not in allowed
    ]


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_a_part_imports_only_the_parts_below_it(part):
    assert modules_of(part) and all(path.exists() for path in modules_of(part))
    assert forbidden_imports(part) == []


def test_the_import_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The reader itself: relative, absolute, package-level and function-level imports are all found."""
    fake = tmp_path / "evospec_hf"
    (fake / "generation").mkdir(parents=True)
    (fake / "generation" / "x.py").write_text(
        "from ..evolve.session import EvoSpecSession\nfrom .. import evolve\nimport evospec_hf.evolve.online\n"
        "def f():\n    from evospec_hf import evolve\n    from .rounds import Draft\n    import torch\n"
    )
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    found = [module for _, module in imported_modules(fake / "generation" / "x.py")]
    assert found == [
        "evospec_hf.evolve.session", "evospec_hf.evolve", "evospec_hf.evolve.online", "evospec_hf.evolve",
        "evospec_hf.generation.rounds",
    ]  # fmt: skip
