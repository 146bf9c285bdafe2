"""Writes a Hugging Face Space folder that deploys as it is: the demo (`examples/space`), the evospec_hf source it
installs (`evospec_hf_src/`, named in its requirements.txt) and the shipped feature drafters (`checkpoints/`).

    evospec-hf build-space --out dist/space
    cd dist/space && git init && git add . && git commit -m "evospec_hf demo" && git push <your Space's repo>
"""

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # a source checkout: examples/space and checkpoints/ live there
CHECKPOINTS = ("gemma-3-270m-feature-l1", "smollm2-135m-feature-l1")
SOURCE = ("evospec_hf", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")


def build(out: Path) -> Path:
    if not (ROOT / "examples" / "space").is_dir():
        raise SystemExit(f"{ROOT} is not a source checkout of evospec_hf (no examples/space): run this from a clone")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(ROOT / "examples" / "space", out, ignore=shutil.ignore_patterns("__pycache__"))
    source = out / "evospec_hf_src"
    source.mkdir()
    for name in SOURCE:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif path.exists():
            shutil.copy2(path, source / name)
    for name in CHECKPOINTS:
        ignore = shutil.ignore_patterns("train_state.pt")
        shutil.copytree(ROOT / "checkpoints" / name, out / "checkpoints" / name, ignore=ignore)
    # checkpoints' weights go through the Hub's large-file storage
    (out / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf build-space", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="dist/space")
    args = parser.parse_args(argv)
    out = build(Path(args.out))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 1e6:.1f} MB): app.py, requirements.txt, evospec_hf_src/, checkpoints/")


if __name__ == "__main__":
    main()
