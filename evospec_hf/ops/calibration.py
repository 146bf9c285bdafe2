"""Costs measured on this machine, kept across processes: a small JSON cache, like Triton's autotune cache.

Some of evospec_hf's choices are measured rather than fixed: which matmul order the target's verification head
runs per row count (`verify_head.VerifyHead`), and the target's verification seconds per draft length
(`draft_schedule="cost"`). They depend on the machine and the model's shapes, not on the prompt, so they are
measured once and kept in `calibration-v1.json` under `$EVOSPEC_HF_CACHE` (default `~/.cache/evospec_hf`, as for
converted targets); a new process starts from what an earlier one measured.

API (the module's whole surface):

    costs = machine_costs(model, "verify_seconds")   # a plain dict, e.g. {3: 0.071, 5: 0.083}
    costs[4] = 0.077                                  # callers read and write it directly
    save_machine_costs()                              # writes every table that gained entries (atomic), or nothing

- `machine_costs(module, name)` returns the live table for (this machine, `module`'s signature, `name`). Within a
  process every caller with the same key gets the *same* dict object (two instances of one architecture share
  it), loaded from the file on first use. Keys must be `int` or `str` and values JSON-serialisable.
  `signature=` replaces the module's signature (`module_signature`) with the caller's own dict.
- `save_machine_costs()` writes the tables that gained entries since the file was last read or written (a draft
  length timed for the first time, a matmul order decided), with their current values. A value that changed for
  an entry the file already has is not a reason to write: `generate` refines its verification costs round after
  round, and writing each refinement would rewrite the file after every call. Such values reach the file with the
  table's next new entry, or with `save_machine_costs(force=True)` (`calibrate`, which measured them on purpose).
  It re-reads the file first, so tables written by other processes meanwhile are kept (the last writer wins per
  table). It is cheap when nothing is due, so callers flush at the end of each `generate` call.
- The key: `machine_fingerprint(device)` (CPU model, core count, torch version, torch threads, device and, on
  CUDA, the GPU's name), `module_signature(module)` (class, parameter shapes, dtype, device, attention
  implementation) and the table's name. Anything else about a model does not change these costs.
- `EVOSPEC_HF_CALIBRATION=0` (or `false`, `off`, `no`) keeps tables in memory only: nothing is read or written.
  Tests point `EVOSPEC_HF_CACHE` at a temporary folder; the file's path is resolved on every call, so a changed
  variable takes effect at once (tables are kept per file).
- A file that cannot be read as this format is ignored with a warning and replaced at the next save. A write
  goes to a temporary file in the same folder, renamed over the old one (`os.replace`), so a reader never sees
  half a file. A failed write warns and leaves the tables in memory.
- `forget_loaded()` drops the in-memory tables, as a new process would start (for tests).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import threading
import uuid
import warnings
from pathlib import Path

import torch

from ..utils import cache_dir, check_format

FORMAT_NAME = "evospec-calibration"
FORMAT_VERSION = 1
FILE_NAME = f"calibration-v{FORMAT_VERSION}.json"  # a later format gets its own file instead of clobbering this one
DISABLE_VALUES = ("0", "false", "off", "no")

_lock = threading.RLock()
# (file path or None when disabled, table key) -> the live table, and a copy of what the file last held for it
_tables: dict[tuple[str | None, str], dict] = {}
_persisted: dict[tuple[str | None, str], dict] = {}
_descriptions: dict[tuple[str | None, str], dict] = {}  # the readable machine / model / name stored beside a table


def calibration_path() -> Path | None:
    """The cache file, or None when `EVOSPEC_HF_CALIBRATION` disables it."""
    if os.environ.get("EVOSPEC_HF_CALIBRATION", "1").strip().lower() in DISABLE_VALUES:
        return None
    return cache_dir() / FILE_NAME


@functools.cache
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_fingerprint(device: torch.device | str = "cpu") -> dict:
    """What makes a cost measured here valid elsewhere: CPU model, cores, torch version and threads, device."""
    device = torch.device(device)
    fingerprint = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device.type,
    }
    if device.type == "cuda":
        fingerprint["gpu"] = torch.cuda.get_device_name(device)
    return fingerprint


def module_signature(module: torch.nn.Module) -> dict:
    """A module's class, parameter shapes, dtype and device (and attention implementation for a transformers model):
    what its costs depend on. Weights' values do not enter, so a fine-tuned copy shares its base model's costs."""
    params = list(module.named_parameters())
    shapes = [[name, list(p.shape)] for name, p in params]
    first = params[0][1] if params else torch.empty(0)
    signature = {"class": f"{type(module).__module__}.{type(module).__qualname__}"}
    if len(shapes) <= 4:  # small modules (an LM head) stay readable in the file
        signature["parameters"] = shapes
    else:
        digest = hashlib.sha1(json.dumps(shapes).encode()).hexdigest()[:16]
        signature["parameters"] = {"count": sum(p.numel() for _, p in params), "shapes_sha1": digest}
    signature["dtype"] = str(first.dtype)
    signature["device"] = str(first.device)
    attention = getattr(getattr(module, "config", None), "_attn_implementation", None)
    if attention is not None:
        signature["attention"] = str(attention)
    return signature


def machine_costs(module: torch.nn.Module | None, name: str, signature: dict | None = None) -> dict:
    """The live table `name` for this machine and `module` (or the given `signature`), shared within the process.

    Args:
        module (`torch.nn.Module`): the model or module the costs are about; its signature and device key the table.
            May be None when `signature` is given (the device is then read from `signature["device"]`, else cpu).
        name (`str`): the table's name, e.g. `"verify_head"` or `"verify_seconds"`.
        signature (`dict`, *optional*): JSON-serialisable; replaces `module_signature(module)`.

    Returns:
        `dict`: the table itself (not a copy); write into it and call `save_machine_costs()` to persist.
    """
    if signature is None:
        signature = module_signature(module)
    device = signature.get("device", "cpu")
    description = {"machine": machine_fingerprint(device), "model": signature, "name": name}
    key = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()
    path = calibration_path()
    slot = (None if path is None else str(path), key)
    with _lock:
        table = _tables.get(slot)
        if table is None:
            stored = {} if path is None else _read(path).get(key, {})
            table = _tables[slot] = _decode(stored.get("values", []))
            _persisted[slot] = dict(table)
            _descriptions[slot] = description
        return table


def save_machine_costs(force: bool = False) -> Path | None:
    """Writes every table that gained entries since it was read or written to its file (with `force`, every table
    whose values changed too). Returns the last file written, or None when nothing needed writing (or the cache is
    disabled, or the write failed with a warning)."""
    written = None
    with _lock:
        changed: dict[str, list] = {}
        for slot, table in _tables.items():
            snapshot = dict(table)  # one copy: other threads may write into the table meanwhile
            persisted = _persisted[slot]
            due = snapshot != persisted if force else not snapshot.keys() <= persisted.keys()
            if slot[0] is not None and due:
                changed.setdefault(slot[0], []).append((slot, snapshot))
        for path, updates in changed.items():
            stored = _read(Path(path))
            encoded = []
            for slot, snapshot in updates:
                try:
                    values = _encode(snapshot)
                    json.dumps(values)
                except (TypeError, ValueError) as error:
                    warnings.warn(
                        f"evospec_hf: calibration table {_descriptions[slot]['name']!r} is not JSON-serialisable "
                        f"({error}); it stays in memory only.", stacklevel=2,
                    )  # fmt: skip
                    _persisted[slot] = snapshot  # warn again only once it changes
                    continue
                stored[slot[1]] = {**_descriptions[slot], "values": values}
                encoded.append((slot, snapshot))
            if encoded and _write(Path(path), stored):
                for slot, snapshot in encoded:
                    _persisted[slot] = snapshot
                written = Path(path)
    return written


def forget_loaded() -> None:
    """Drops every table held in memory, as a new process starts: the next `machine_costs` reads the file again.
    Callers holding an old table keep a detached copy."""
    with _lock:
        _tables.clear()
        _persisted.clear()
        _descriptions.clear()


# -- the file ---------------------------------------------------------------------------------------------------


def _read(path: Path) -> dict:
    """`{key: entry}` from the file; empty (with a warning) when it is missing or not in this format."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        warnings.warn(
            f"evospec_hf: cannot read the calibration cache {path} ({error}); measuring again.", stacklevel=3
        )
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
            raise ValueError("not a calibration file")
        if data.get("format") == FORMAT_VERSION and "version" not in data:  # the first layout: {"format": 1}
            data = {**data, "format": FORMAT_NAME, "version": FORMAT_VERSION}
        check_format(data, FORMAT_NAME, FORMAT_VERSION, "a calibration cache", "the file")
        tables = data["tables"]
        for entry in tables.values():
            _decode(entry["values"])  # every entry must decode, or the file is not trusted at all
        return tables
    except (ValueError, KeyError, TypeError) as error:
        warnings.warn(
            f"evospec_hf: ignoring the corrupt calibration cache {path} ({error}); it will be rewritten.", stacklevel=3
        )
        return {}


def _write(path: Path, tables: dict) -> bool:
    text = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tables": tables}, indent=1, sort_keys=True)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # same folder, so that the rename is atomic: a reader sees the old file or the new one, never a part;
        # a name of its own per process and thread, created with the usual permissions (not mkstemp's 0600)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(text + "\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as error:
        warnings.warn(f"evospec_hf: cannot write the calibration cache {path} ({error}).", stacklevel=3)
        return False
    return True


def _encode(table: dict) -> list:
    # pairs rather than a JSON object, so that int keys (draft lengths, row counts) come back as ints
    for key in table:
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError(f"keys must be int or str, got {key!r}")
    return [[key, value] for key, value in table.items()]


def _decode(pairs) -> dict:
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise ValueError("a table's values must be a list of [key, value] pairs")
    return {key: value for key, value in pairs}
