"""Distilling a feature drafter (`evospec_hf.distill.feature`, `evospec-hf distill --kind feature`): the
teacher cache resumes and splits across processes, training resumes where it stopped, the unrolled loss trains later
draft steps on the drafter's own states, and `accelerate launch` runs it data-parallel on two CPU processes with the
same result as one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from evospec_hf.distill.feature import cache_teacher, train, unrolled_loss
from evospec_hf.models import feature_drafter_from_target

from ..conftest import sharpened, target_text, tiny_llama

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target():
    return sharpened(tiny_llama(seed=0, layers=3))


@pytest.fixture(scope="module")
def chunks(target):
    return target_text(target, 12)


def records_of(paths):
    return [r for path in paths for r in torch.load(path)]


def test_the_teacher_cache_keeps_what_exists_and_splits_by_process(target, chunks, tmp_path):
    folder = tmp_path / "teacher"
    # two processes: each writes only its own shards (shard_size 4: shards 0 and 2 for rank 0, 1 for rank 1)
    cache_teacher(target, chunks, folder, (-1,), topk=8, shard_size=4, rank=0, world_size=2, progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["shard_00000.pt", "shard_00002.pt"]
    paths = cache_teacher(target, chunks, folder, (-1,), topk=8, shard_size=4, rank=1, world_size=2, progress=False)
    assert [p.name for p in paths] == ["shard_00000.pt", "shard_00001.pt", "shard_00002.pt"]
    stamp = paths[0].stat().st_mtime_ns
    cache_teacher(target, chunks, folder, (-1,), topk=8, shard_size=4, progress=False)  # a restart
    assert paths[0].stat().st_mtime_ns == stamp  # kept, not recomputed
    records = records_of(paths)
    assert [r["ids"].tolist() for r in records] == [ids.tolist() for _, ids in chunks]  # in order, none lost
    with torch.no_grad():
        out = target(chunks[5][1][None], output_hidden_states=True)
    torch.testing.assert_close(records[5]["last"].float(), out.hidden_states[-1][0], atol=1e-2, rtol=1e-2)
    assert torch.equal(records[5]["topk_ids"][:, 0].long(), out.logits[0].argmax(-1))


def test_later_draft_steps_are_trained_on_the_drafters_own_states(target, chunks, tmp_path, monkeypatch):
    """Step 0 reads the target's hidden states; steps 1 and 2 read the states the drafter predicted one step before,
    with their gradient kept (the training-time test of EAGLE-3 / HASS)."""
    import evospec_hf.models.drafter as module  # where the pairs are made (`shifted_feature_inputs`)

    records = records_of(cache_teacher(target, chunks[:4], tmp_path, (-1,), topk=8, progress=False))
    drafter = feature_drafter_from_target(target, 1)
    reads, outputs = [], []
    original_inputs, body = module.feature_inputs, drafter.model.forward

    def spy_inputs(model, token_ids, features=None, own=None):
        reads.append(("target" if features is not None else "own", own))
        return original_inputs(model, token_ids, features=features, own=own)

    def spy_body(*args, **kwargs):
        out = body(*args, **kwargs)
        outputs.append(out.last_hidden_state)
        return out

    monkeypatch.setattr(module, "feature_inputs", spy_inputs)
    monkeypatch.setattr(drafter.model, "forward", spy_body)
    total, steps = unrolled_loss(drafter, records, unroll=3)
    assert [kind for kind, _ in reads] == ["target", "own", "own"] and len(steps) == 3
    length = records[0]["ids"].shape[0]
    for s in (1, 2):  # step s reads step s - 1's predictions at the positions it drafts from
        own = reads[s][1]
        assert own.grad_fn is not None and torch.equal(own, outputs[s - 1][:, : length - 1 - s])
    total.backward()
    assert drafter.evospec_combine.weight.grad.abs().sum() > 0


def test_training_resumes_where_it_stopped(target, chunks, tmp_path, monkeypatch):
    records = records_of(cache_teacher(target, chunks, tmp_path / "teacher", (-1,), topk=8, progress=False))

    def run(state_path):
        torch.manual_seed(0)
        drafter = feature_drafter_from_target(target, 1)
        for name, p in drafter.named_parameters():
            p.requires_grad_(".layers." in name or "evospec" in name)
        history = train(drafter, records, Accelerator(cpu=True), 6, 4, 3e-3, state_path, negatives=16, save_every=1,
                        progress=False)  # fmt: skip
        return drafter, history

    whole, history = run(tmp_path / "whole.pt")

    saved, replace = [], os.replace

    def killed_after_the_third_save(source, destination):  # the process dies once step 3 is on disk
        replace(source, destination)
        saved.append(destination)
        if len(saved) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed_after_the_third_save)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "resumed.pt")
    assert torch.load(tmp_path / "resumed.pt", weights_only=False)["step"] == 3
    monkeypatch.undo()
    resumed, resumed_history = run(tmp_path / "resumed.pt")
    assert resumed_history == history
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_time_budget_shortens_the_run_and_anneals_over_what_fits(target, chunks, tmp_path, monkeypatch):
    """Each step 'takes' one second (a clock that the optimiser's step moves): a 45-second budget fits about 45 of
    100 steps, and the learning rate reaches the end of its cosine there, not halfway."""
    import evospec_hf.distill.feature as feature

    records = records_of(cache_teacher(target, chunks, tmp_path / "teacher", (-1,), topk=8, progress=False))
    clock = [0.0]
    monkeypatch.setattr(feature.time, "monotonic", lambda: clock[0])
    drafter = feature_drafter_from_target(target, 1)
    for name, p in drafter.named_parameters():
        p.requires_grad_(".layers." in name or "evospec" in name)
    rates = []
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        clock[0] += 1.0
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    history = train(drafter, records, Accelerator(cpu=True), 100, 2, 1e-3, tmp_path / "state.pt", negatives=16,
                    save_every=1000, progress=False, time_budget_s=45)  # fmt: skip
    assert 40 <= len(history) <= 50
    assert rates[-1] < 0.01 * 1e-3  # annealed by the end of the shortened run
    assert torch.load(tmp_path / "state.pt", weights_only=False)["total_steps"] == len(history)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_matches_one(target, chunks, tmp_path):
    """`accelerate launch --num_processes 2` on CPU (gloo): each process caches half the teacher shards and trains
    on half of every batch, gradients averaged; the weights equal a one-process run's."""
    target.save_pretrained(tmp_path / "target")
    torch.save({"train": chunks[:8], "heldout": chunks[8:]}, tmp_path / "chunks.pt")
    common = [
        "-m", "evospec_hf.commands.distill", "--kind", "feature", "--target", str(tmp_path / "target"),
        "--chunks-file", str(tmp_path / "chunks.pt"), "--steps", "4", "--batch", "4", "--lora-rank", "4",
        "--topk", "8", "--negatives", "4096", "--no-static-table", "--cpu",
    ]  # fmt: skip
    # 4,096 random negatives cover the 96-token vocabulary: each process's softmax then runs over the same ids as the
    # single process's (with fewer, the sampled support is the union of each half-batch's teacher ids and differs)
    env = dict(os.environ, OMP_NUM_THREADS="1", EVOSPEC_HF_CACHE=str(tmp_path / "cache"))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    for name, command in (("two", launch + common), ("one", [sys.executable] + common)):
        result = subprocess.run(command + ["--out", str(tmp_path / name)], env=env, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    reports = {name: json.loads((tmp_path / name / "distill_report.json").read_text()) for name in ("two", "one")}
    assert reports["two"]["processes"] == 2 and reports["one"]["processes"] == 1
    two, one = (torch.load(tmp_path / name / "train_state.pt")["weights"] for name in ("two", "one"))
    assert two.keys() == one.keys() and any(k.endswith("lora_B.default.weight") for k in two)
    for key in two:
        torch.testing.assert_close(two[key], one[key], atol=1e-4, rtol=1e-3, msg=key)
    assert reports["two"]["loss_first"] == pytest.approx(reports["one"]["loss_first"], rel=1e-3)


def test_a_lent_machine_generates_continuations_and_continues_a_drafter(target, chunks, tmp_path):
    """What `scripts/gpu_train_feature.sh` runs on a lent GPU: the chunks file carries prompts, the script generates the target's
    greedy continuations of them there (cut into `--seq-len` chunks, kept in `--out` for a restart) and continues
    training a saved drafter's adapter (`--init-adapter`): its 'before' agreement is that drafter's, not zero."""
    target.save_pretrained(tmp_path / "target")
    prompts = [("synthetic", ids[:6].int()) for _, ids in chunks[:8]]
    torch.save({"train": chunks[:8], "heldout": chunks[8:], "prompts": prompts}, tmp_path / "chunks.pt")
    env = dict(os.environ, OMP_NUM_THREADS="1", EVOSPEC_HF_CACHE=str(tmp_path / "cache"))
    common = [
        sys.executable, "-m", "evospec_hf.commands.distill", "--kind", "feature", "--target",
        str(tmp_path / "target"), "--chunks-file", str(tmp_path / "chunks.pt"), "--batch", "4", "--lora-rank", "4",
        "--topk", "8", "--negatives", "64", "--no-static-table", "--cpu", "--seq-len", "16", "--lr", "1e-2",
    ]  # fmt: skip
    first = subprocess.run(common + ["--steps", "30", "--out", str(tmp_path / "first")], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run(
        common + ["--steps", "4", "--continuation-tokens", "10", "--generation-batch", "4",
                  "--init-adapter", str(tmp_path / "first"), "--out", str(tmp_path / "second")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 continuations of 8 prompts" in second.stdout, second.stdout[-2000:]
    assert (tmp_path / "second" / "continuations-10-0-of-1.pt").exists()
    before = json.loads((tmp_path / "first" / "distill_report.json").read_text())
    after = json.loads((tmp_path / "second" / "distill_report.json").read_text())
    assert after["agreement_before"] == before["agreement_after"]  # it started from the first run's adapter
    assert after["train_chunks"] > before["train_chunks"]  # the continuations joined the training text
    assert after["init_adapter"] == str(tmp_path / "first") and after["continuation_tokens"] == 10
