"""`evospec-hf build-space`: a Space folder that deploys as it is."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_space_folder_holds_the_app_its_source_and_checkpoints(tmp_path):
    from evospec_hf.commands import build_space as module

    out = module.build(tmp_path / "space")
    front_matter = (out / "README.md").read_text().split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "license: apache-2.0", "google/gemma-3-270m"):
        assert line in front_matter
    assert (out / "app.py").read_text() == (ROOT / "examples" / "space" / "app.py").read_text()
    # requirements.txt installs the copied source, with the extras the app needs
    requirement = next(line for line in (out / "requirements.txt").read_text().splitlines() if line[:1] not in "#")
    assert requirement.startswith("./evospec_hf_src[") and "real" in requirement and "demo" in requirement
    source = out / "evospec_hf_src"
    assert (source / "setup.cfg").is_file() and (source / "evospec_hf" / "__init__.py").is_file()
    assert "demo =" in (source / "setup.cfg").read_text()
    # the copied source builds (what the Space's `pip install -r requirements.txt` does first)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    built = subprocess.run([*command, "-w", str(tmp_path)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    assert list(tmp_path.glob("evospec_hf-*.whl"))
    for name in module.CHECKPOINTS:
        assert (out / "checkpoints" / name / "evospec_drafter.json").is_file()
    assert not list(out.rglob("__pycache__"))
