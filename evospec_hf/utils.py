"""Small helpers shared across sub-packages."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path


def cache_dir() -> Path:
    """evospec_hf's folder for what it keeps between processes (converted targets, the machine's calibration):
    `$EVOSPEC_HF_CACHE`, else `~/.cache/evospec_hf`."""
    return Path(os.environ.get("EVOSPEC_HF_CACHE", Path.home() / ".cache" / "evospec_hf"))


def unwrap_peft(model):
    """The transformers model beneath a peft wrapper (the model itself when it is not wrapped)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def peft_wrapping():
    """Around evospec_hf's own calls that wrap a model in peft (`PeftModel.from_pretrained`, `get_peft_model`).

    peft (0.21) reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model, and transformers
    then warns the user about a call neither they nor evospec_hf made. That one FutureWarning is hidden here, for
    the duration of the wrap only; every other warning shows as usual.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def decoder_body(model):
    """A causal LM's decoder body beneath its LM head (token ids or `inputs_embeds` -> `last_hidden_state`), beneath
    any peft wrapper: its `base_model`, or its `.model` where the class's `base_model_prefix` names no attribute
    (Llama 4's causal LM has the prefix "language_model" and keeps its body in `.model`)."""
    model = unwrap_peft(model)
    body = model.base_model
    if body is model and hasattr(getattr(model, "model", None), "forward"):
        return model.model
    return body


def drafter_folder(drafter) -> str:
    """The folder a drafter was loaded from ('' when it was built in memory): where its shortlist files live."""
    return getattr(unwrap_peft(drafter), "name_or_path", "") or ""


# -- checks of config values --------------------------------------------------------------------------------------
# Every config field is checked by one of these, so that a bad value always gets the same kind of message:
# a ValueError that names the field, shows the value and says what is expected.


def is_int(value) -> bool:
    """Whether `value` is a Python int. Booleans are ints in Python, but `True` as a count is always a mistake."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int | None = 1, optional: bool = False) -> None:
    """Raises a ValueError naming `name` unless `value` is an int >= `minimum` (any int when `minimum` is None),
    or None when `optional`."""
    if optional and value is None:
        return
    if is_int(value) and (minimum is None or value >= minimum):
        return
    expected = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}.get(
        minimum, f"an integer >= {minimum}"
    )
    raise ValueError(f"`{name}` must be {'None or ' if optional else ''}{expected}, got {value!r}.")


def check_number(
    name: str, value, above: float | None = None, below: float | None = None, minimum: float | None = None,
    optional: bool = False,
) -> None:  # fmt: skip
    """Raises a ValueError naming `name` unless `value` is an int or a float with `above < value < below` and
    `value >= minimum` (each bound only when given), or None when `optional`. Any bound refuses NaN."""
    if optional and value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (above is None or value > above) and (below is None or value < below)
    ok = ok and (minimum is None or value >= minimum)
    if ok:
        return
    bounds = [f"> {above}"] * (above is not None) + [f">= {minimum}"] * (minimum is not None)
    bounds += [f"< {below}"] * (below is not None)
    expected = " ".join(["a number", " and ".join(bounds)]).strip()
    if above is not None and below is not None and minimum is None:
        expected = f"a number in ({above}, {below})"
    raise ValueError(f"`{name}` must be {'None or ' if optional else ''}{expected}, got {value!r}.")


def check_bool(name: str, value) -> None:
    """Raises a ValueError naming `name` unless `value` is True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"`{name}` must be True or False, got {value!r}.")


def check_choice(name: str, value, choices: tuple) -> None:
    """Raises a ValueError naming `name` unless `value` is one of the strings `choices`."""
    if not (isinstance(value, str) and value in choices):
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_path(name: str, value, optional: bool = True) -> None:
    """Raises a ValueError naming `name` unless `value` is a str or an `os.PathLike` path (or None when `optional`)."""
    if optional and value is None:
        return
    if isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)):
        return
    expected = "None, a str or an os.PathLike path" if optional else "a str or an os.PathLike path"
    raise ValueError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).")


def expected_tokens_per_round(acceptance: float, drafted: float) -> float:
    """Tokens a round yields (accepted drafts + the target's own) when each of `drafted` drafts is accepted with
    probability `acceptance`, independently, until the first rejection: `1 + a + ... + a^k`. The draft length rules
    and the learning governor both read it."""
    a = min(max(float(acceptance), 0.0), 1.0)
    if a == 1.0:
        return drafted + 1.0
    return (1.0 - a ** (drafted + 1)) / (1.0 - a)


def check_format(data: dict, name: str, newest: int, what: str, where, oldest: int = 1) -> int:
    """The one check of an evospec_hf file's `"format"` and `"version"` fields (configs, checkpoints, exit heads,
    frequency tables, semantic indexes, the calibration cache, continuation folders). Returns the version.

    Args:
        data: the file's fields (a JSON object; safetensors metadata with its version made an int).
        name: the format it must name, e.g. `"evospec-drafter"`.
        newest: the newest version this evospec_hf reads; `oldest`: the oldest.
        what: what the file is, for messages ("an evospec_hf drafter checkpoint").
        where: the file's path, for messages.
    """
    fmt, version = data.get("format"), data.get("version")
    if fmt != name:
        raise ValueError(f"{where} is not {what}: its 'format' is {fmt!r}, expected {name!r}.")
    if not is_int(version) or version < oldest:
        raise ValueError(f"{where} is corrupt: its 'version' is {version!r}, expected {oldest} to {newest}.")
    if version > newest:
        raise ValueError(
            f"{where} has format version {version}, but this evospec_hf reads versions {oldest} to {newest}: it was "
            "written by a newer evospec_hf; upgrade evospec_hf to read it."
        )
    return version
