"""Machine costs kept across processes (`evospec_hf.ops.calibration`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evospec_hf.ops import calibration
from evospec_hf.ops.calibration import forget_loaded, machine_costs, save_machine_costs
from tests.conftest import run_together, tiny_gpt2, tiny_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("EVOSPEC_HF_CACHE", str(folder))
    monkeypatch.delenv("EVOSPEC_HF_CALIBRATION", raising=False)
    forget_loaded()
    yield folder
    forget_loaded()


def test_one_live_table_per_machine_model_and_name():
    llama, other_llama, gpt2 = tiny_llama(seed=0), tiny_llama(seed=1), tiny_gpt2(seed=0)
    costs = machine_costs(llama, "verify_seconds")
    assert costs == {} and machine_costs(other_llama, "verify_seconds") is costs  # same shapes: same costs
    assert machine_costs(gpt2, "verify_seconds") is not costs
    assert machine_costs(llama, "verify_head") is not costs
    assert machine_costs(llama.to(torch.float16), "verify_seconds") is not costs  # another dtype


def test_persisted_across_a_new_process(cache_dir):
    model = tiny_llama(seed=0)
    costs = machine_costs(model, "verify_seconds")
    costs.update({1: 0.05, 4: 0.0725})
    assert save_machine_costs() == cache_dir / calibration.FILE_NAME
    forget_loaded()  # what a new process has in memory
    again = machine_costs(tiny_llama(seed=3), "verify_seconds")
    assert again is not costs and again == {1: 0.05, 4: 0.0725}  # int keys come back as ints


def test_persisted_across_a_real_new_process(cache_dir):
    head = torch.nn.Linear(32, 96, bias=False)
    machine_costs(head, "verify_head")[3] = "W @ H.T"
    save_machine_costs()
    script = (
        "import torch\n"
        "from evospec_hf.ops.calibration import machine_costs\n"
        "print(machine_costs(torch.nn.Linear(32, 96, bias=False), 'verify_head'))\n"
    )
    env = {**os.environ, "EVOSPEC_HF_CACHE": str(cache_dir), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "{3: 'W @ H.T'}"


def test_a_changed_machine_does_not_reuse_costs():
    model = tiny_llama(seed=0)
    machine_costs(model, "verify_seconds")[2] = 0.1
    save_machine_costs()
    forget_loaded()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert machine_costs(model, "verify_seconds") == {}
    finally:
        torch.set_num_threads(threads)
    assert machine_costs(model, "verify_seconds") == {2: 0.1}


def test_tables_written_by_other_processes_are_kept(cache_dir):
    model = tiny_llama(seed=0)
    machine_costs(model, "verify_seconds")[2] = 0.1
    save_machine_costs()
    forget_loaded()  # a second process writes another table
    machine_costs(model, "verify_head")[2] = "F.linear"
    save_machine_costs()
    forget_loaded()
    assert machine_costs(model, "verify_seconds") == {2: 0.1}
    assert machine_costs(model, "verify_head") == {2: "F.linear"}


def test_nothing_written_when_nothing_changed(cache_dir):
    machine_costs(tiny_llama(seed=0), "verify_seconds")
    assert save_machine_costs() is None and not cache_dir.exists()


def test_a_corrupt_file_is_ignored_with_a_warning_and_rewritten(cache_dir):
    cache_dir.mkdir()
    path = cache_dir / calibration.FILE_NAME
    path.write_text('{"format": 1, "tables": {"abc": {"values": [[1, 0.5]]', encoding="utf-8")  # cut short
    model = tiny_llama(seed=0)
    with pytest.warns(UserWarning, match="corrupt calibration cache"):
        costs = machine_costs(model, "verify_seconds")
    assert costs == {}
    costs[3] = 0.2
    with pytest.warns(UserWarning, match="corrupt calibration cache"):
        save_machine_costs()
    data = json.loads(path.read_text(encoding="utf-8"))
    assert (data["format"], data["version"]) == (calibration.FORMAT_NAME, calibration.FORMAT_VERSION)
    assert [entry["values"] for entry in data["tables"].values()] == [[[3, 0.2]]]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param('{"format": 99, "tables": {}}', id="another-format"),
        pytest.param('{"format": 1, "tables": {"k": {"values": {"1": 2}}}}', id="values-not-pairs"),
        pytest.param("[1, 2]", id="not-an-object"),
    ],
)
def test_files_of_another_shape_are_not_trusted(cache_dir, content):
    cache_dir.mkdir()
    (cache_dir / calibration.FILE_NAME).write_text(content, encoding="utf-8")
    with pytest.warns(UserWarning, match="corrupt calibration cache"):
        assert machine_costs(tiny_llama(seed=0), "verify_seconds") == {}


def test_disabled_by_the_environment(cache_dir, monkeypatch):
    model = tiny_llama(seed=0)
    machine_costs(model, "verify_seconds")[1] = 0.05
    save_machine_costs()
    forget_loaded()
    monkeypatch.setenv("EVOSPEC_HF_CALIBRATION", "0")
    assert calibration.calibration_path() is None
    costs = machine_costs(model, "verify_seconds")
    assert costs == {}  # the file is not read
    costs[1] = 9.0
    assert save_machine_costs() is None  # nor written
    assert machine_costs(model, "verify_seconds") is costs  # still shared within the process
    monkeypatch.delenv("EVOSPEC_HF_CALIBRATION")
    forget_loaded()
    assert machine_costs(model, "verify_seconds") == {1: 0.05}


def test_a_failed_write_leaves_the_old_file_whole(cache_dir, monkeypatch):
    model = tiny_llama(seed=0)
    machine_costs(model, "verify_seconds")[1] = 0.05
    save_machine_costs()
    path = cache_dir / calibration.FILE_NAME
    before = path.read_bytes()

    def interrupted(src, dst):  # the process dies between writing the new file and renaming it
        raise OSError("interrupted")

    real_replace = calibration.os.replace
    monkeypatch.setattr(calibration.os, "replace", interrupted)
    machine_costs(model, "verify_seconds")[2] = 0.08
    with pytest.warns(UserWarning, match="cannot write the calibration cache"):
        assert save_machine_costs() is None
    assert path.read_bytes() == before
    assert sorted(p.name for p in cache_dir.iterdir()) == [calibration.FILE_NAME]  # no temporary file left
    monkeypatch.setattr(calibration.os, "replace", real_replace)
    assert save_machine_costs() == path  # still pending: written at the next save
    forget_loaded()
    assert machine_costs(model, "verify_seconds") == {1: 0.05, 2: 0.08}


def test_keys_must_be_ints_or_strings():
    machine_costs(tiny_llama(seed=0), "odd")[(1, 2)] = 0.5
    with pytest.warns(UserWarning, match="not JSON-serialisable"):
        assert save_machine_costs() is None


def test_threads_share_tables_and_saves_stay_valid(cache_dir):
    model = tiny_llama(seed=0)

    def worker(i):
        costs = machine_costs(model, "verify_seconds")
        for j in range(20):
            costs[i * 100 + j] = float(j)
            save_machine_costs()
        return costs

    tables = run_together([lambda i=i: worker(i) for i in range(8)], timeout=60)
    assert all(t is tables[0] for t in tables)
    forget_loaded()
    assert machine_costs(model, "verify_seconds") == {i * 100 + j: float(j) for i in range(8) for j in range(20)}


def test_refined_values_wait_for_a_new_entry_or_force(cache_dir):
    model = tiny_llama(seed=0)
    costs = machine_costs(model, "verify_seconds")
    costs[1] = 0.05
    path = save_machine_costs()
    before = path.stat().st_mtime_ns, path.read_bytes()
    costs[1] = 0.06  # generate refines a cost the file has: no reason to rewrite it
    assert save_machine_costs() is None
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before
    costs[2] = 0.08  # a new entry: the table is written, the refined value with it
    assert save_machine_costs() == path
    forget_loaded()
    costs = machine_costs(model, "verify_seconds")
    assert costs == {1: 0.06, 2: 0.08}
    costs[2] = 0.07
    assert save_machine_costs(force=True) == path  # calibrate measured it again: written
    forget_loaded()
    assert machine_costs(model, "verify_seconds") == {1: 0.06, 2: 0.07}
