"""`calibrate`: this machine's verification costs measured before the first timed call, and kept."""

import torch

import evospec_hf
from evospec_hf.generation.costs import BATCH_LENGTHS
from evospec_hf import DraftStats, EvoSpecConfig
from evospec_hf.generation.schedule import CostAwareLength
from evospec_hf.ops.calibration import FILE_NAME, forget_loaded, machine_costs
from evospec_hf.ops.verify_head import VerifyHead

from ..conftest import VOCAB_SIZE, noisy_copy, tiny_llama


def count_forwards(model) -> list:
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls


def test_calibrate_measures_every_length_once_per_machine_and_shape():
    forget_loaded()  # as a new process on a machine without a cache
    target = tiny_llama(seed=0)
    forwards = count_forwards(target)
    table = evospec_hf.calibrate(target, max_draft_tokens=5, context_length=16, progress=False)
    assert sorted(table) == [1, 2, 3, 4, 5] and all(seconds > 0 for seconds in table.values())
    assert machine_costs(target, "verify_seconds") == table  # what the "cost" schedule reads
    assert forwards  # it did run the target
    forwards.clear()
    assert evospec_hf.calibrate(tiny_llama(seed=0), max_draft_tokens=5, progress=False) == table  # same shape: kept
    again = tiny_llama(seed=0)
    forwards = count_forwards(again)
    evospec_hf.calibrate(again, max_draft_tokens=5, progress=False)
    assert not forwards  # nothing measured again
    evospec_hf.calibrate(again, max_draft_tokens=6, progress=False, context_length=16)
    assert forwards and 6 in machine_costs(again, "verify_seconds")  # a longer round is measured when asked
    forwards.clear()
    table = evospec_hf.calibrate(again, max_draft_tokens=6, progress=False, context_length=16, batched=True)
    assert forwards and sorted(table) == [1, 2, 3, 4, 5, 6, *BATCH_LENGTHS]  # the positions of batched rounds, on ask


def test_calibrate_settles_rounds_whose_row_count_shares_a_bucket():
    forget_loaded()
    target = tiny_llama(seed=0)
    evospec_hf.calibrate(target, max_draft_tokens=17, context_length=16, progress=False)  # 18 rows: filed under 24
    forwards = count_forwards(target)
    assert 17 in evospec_hf.calibrate(target, max_draft_tokens=17, context_length=16, progress=False)
    assert not forwards  # every length and its head's choice kept: nothing measured again


def test_after_calibrate_the_first_call_neither_tries_the_head_nor_explores_lengths(monkeypatch):
    forget_loaded()
    target = tiny_llama(seed=0)
    config = EvoSpecConfig(num_draft_tokens=3, max_draft_tokens=6, lookup_tokens=6)
    evospec_hf.calibrate(target, max_draft_tokens=6, context_length=16, progress=False)
    trials, choices = [], []
    original_call, original_choose = VerifyHead.__call__, CostAwareLength.choose

    def spy_call(self, x, weight, bias=None):
        rows = x.numel() // x.shape[-1]
        if rows > 1 and rows not in self.choices:
            trials.append(rows)
        return original_call(self, x, weight, bias)

    def spy_choose(self, source, upper, start=None):
        choices.append(dict(self.verify_seconds))
        return original_choose(self, source, upper, start)

    monkeypatch.setattr(VerifyHead, "__call__", spy_call)
    monkeypatch.setattr(CostAwareLength, "choose", spy_choose)
    prompt = torch.randint(3, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))
    stats = DraftStats()
    got = target.generate(
        prompt, max_new_tokens=20, do_sample=False, assistant_model=noisy_copy(target, seed=1), evospec_config=config,
        evospec_stats=stats,
    )  # fmt: skip
    assert torch.equal(got, target.generate(prompt, max_new_tokens=20, do_sample=False))
    assert not trials  # every row count the call verified was already decided
    assert choices and all(set(table) >= set(range(1, 7)) for table in choices)  # every length known from round one


def test_calls_after_calibrate_leave_the_calibration_file_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOSPEC_HF_CACHE", str(tmp_path))
    monkeypatch.delenv("EVOSPEC_HF_CALIBRATION", raising=False)  # this test writes the file (in tmp_path)
    forget_loaded()
    target = tiny_llama(seed=0)
    config = EvoSpecConfig(num_draft_tokens=3, max_draft_tokens=6, lookup_tokens=6)  # the "cost" schedule
    evospec_hf.calibrate(target, max_draft_tokens=6, context_length=16, progress=False)
    path = tmp_path / FILE_NAME
    prompt = torch.randint(3, VOCAB_SIZE, (1, 12), generator=torch.Generator().manual_seed(0))
    drafter = noisy_copy(target, seed=1)
    files = [(path.stat().st_mtime_ns, path.read_bytes())]
    try:
        for _ in range(2):  # two identical calls: they refine the costs in memory, the file stays as it was
            target.generate(prompt, max_new_tokens=20, do_sample=False, assistant_model=drafter, evospec_config=config)
            files.append((path.stat().st_mtime_ns, path.read_bytes()))
    finally:
        forget_loaded()  # the other tests' tables stay in memory only
    assert files[2] == files[1] == files[0]
