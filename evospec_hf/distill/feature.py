"""Distilling a feature drafter (EAGLE-style) from its target: the teacher cache, the unrolled loss, the training loop.

`evospec-hf distill --kind feature` drives it; `accelerate launch` runs it data-parallel on several
processes (CPU or GPU, one machine or several).

1. **Teacher cache** (`cache_teacher`): for every training chunk, the target's hidden states at the drafter's
   `feature_layers`, its last hidden state (the regression target) and its top-k logits, in fp16 shards on disk.
   Each process writes the shards `rank::world_size`; a shard that exists is kept, so an interrupted run resumes.
2. **Loss** (`unrolled_loss`): the drafter reads the target's hidden state at each position with the next token
   and predicts the next hidden state; the loss is top-k KD of the LM head over the teacher's top-k ids plus random
   negatives (`evospec_hf.evolve.kd.topk_kd_loss`, softcapping included), plus a smooth-L1 regression of the
   predicted hidden state onto the target's. Then it is unrolled: step s reads the drafter's own predictions of
   step s - 1 in place of the target's hidden states, as drafting does within a round, so later draft positions
   are trained as they are used (EAGLE-3's training-time test, HASS). In this parallel form every position of a
   step reads predicted states, slightly harder than drafting, where the earlier context holds the target's.
3. **Training** (`train`): AdamW on the drafter's LoRA weights and its two input projections, cosine schedule with
   warm-up, gradient clipping; the state is saved every `save_every` steps and reloaded on restart.
4. **Evaluation** (`agreement`): on held-out chunks, how often the drafter's greedy token equals the target's, for
   the first draft (reading the target's hidden state) and for later drafts (reading its own).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..evolve.kd import topk_kd_loss
from ..models.drafter import shifted_feature_inputs
from ..ops.softcap import logit_transform, softcap
from ..utils import decoder_body, unwrap_peft


@torch.no_grad()
def cache_teacher(
    target, chunks: list, folder: Path, feature_layers, topk: int, shard_size: int = 8, rank: int = 0,
    world_size: int = 1, progress: bool = True,
) -> list[Path]:  # fmt: skip
    """Writes the teacher shards this process owns and returns every shard's path (once all exist).

    Args:
        chunks: `(kind, ids)` pairs, `ids` a 1-D LongTensor.
        folder: where the shards go (one folder per target, chunk set, layers and k).
        feature_layers: the hidden-state indices the drafter reads (`output_hidden_states` indices).

    Each shard is a list of records `{"kind", "ids", "features" (T, len(layers) * d) bf16, "last" (T, d) fp16,
    "topk_ids" (T, k) int32, "topk_logits" (T, k) fp16}`. Features are bf16: a model's middle hidden states can
    exceed fp16's range (Gemma-3-270M's reach 1e5), while the last one is normalised.
    """
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    device = next(target.parameters()).device
    shards = [chunks[i : i + shard_size] for i in range(0, len(chunks), shard_size)]
    layers = list(feature_layers)
    mine = range(rank, len(shards), world_size)
    for n in tqdm(mine, desc=f"teacher states (process {rank})", unit="shard", disable=not progress):
        path = folder / f"shard_{n:05d}.pt"
        if path.exists():
            continue
        records = [None] * len(shards[n])
        by_length: dict[int, list[int]] = {}  # chunks of one length run as one batch
        for i, (_, ids) in enumerate(shards[n]):
            by_length.setdefault(ids.shape[0], []).append(i)
        for members in by_length.values():
            batch = torch.stack([shards[n][i][1] for i in members]).to(device)
            out = target(batch, output_hidden_states=True)
            states = out.hidden_states
            values, indices = out.logits.float().topk(topk, dim=-1)
            for b, i in enumerate(members):
                records[i] = {
                    "kind": shards[n][i][0], "ids": batch[b].cpu(),
                    "features": torch.cat([states[l][b] for l in layers], dim=-1).bfloat16().cpu(),
                    "last": states[-1][b].half().cpu(),
                    "topk_ids": indices[b].int().cpu(), "topk_logits": values[b].half().cpu(),
                }  # fmt: skip
        torch.save(records, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    return [folder / f"shard_{n:05d}.pt" for n in range(len(shards))]


def unrolled_loss(
    drafter, records: list, unroll: int = 3, negatives: torch.Tensor | None = None, feature_weight: float = 0.1,
    step_decay: float = 0.8,
) -> tuple[torch.Tensor, list[float]]:  # fmt: skip
    """The mean distillation loss of chunks of one length (`records`, stacked into one batch), unrolled over
    `unroll` draft steps.

    Step s pairs position j with token j + 1 + s and reads, at step 0, the target's hidden state at j, and after
    that the drafter's own prediction from step s - 1; its output at j predicts the hidden state at j + 1 + s and,
    through the LM head, token j + 2 + s, whose teacher distribution is the target's logits at j + 1 + s. Steps are
    weighted `step_decay ** s`.

    Returns:
        the loss (a scalar) and each step's KD loss (floats, for logs).
    """
    model = unwrap_peft(drafter)
    head = model.get_output_embeddings()
    weight, bias, cap = head.weight, getattr(head, "bias", None), logit_transform(model)
    device = weight.device

    def stack(key, dtype=None):
        batch = torch.stack([r[key] for r in records]).to(device)
        return batch if dtype is None else batch.to(dtype)

    ids, features, last = stack("ids"), stack("features"), stack("last", torch.float32)
    teacher_ids, teacher_logits = stack("topk_ids", torch.long), stack("topk_logits", torch.float32)
    batch, length = ids.shape
    total, per_step, own = 0.0, [], None
    for s in range(unroll):
        n = length - 1 - s  # pairs j = 0..n-1
        if n < 1:
            break
        inputs = shifted_feature_inputs(model, ids, features=features if s == 0 else None, own=own, step=s)
        positions = torch.arange(s, s + n, device=device).expand(batch, n)  # where these pairs sit when drafting
        hidden = decoder_body(model)(inputs_embeds=inputs, position_ids=positions).last_hidden_state
        targets = slice(1 + s, 1 + s + n)
        flat = hidden.reshape(-1, hidden.shape[-1])
        kd = topk_kd_loss(
            flat, weight, bias, teacher_ids[:, targets].reshape(flat.shape[0], -1),
            teacher_logits[:, targets].reshape(flat.shape[0], -1), negatives=negatives, softcap=cap,
        )  # fmt: skip
        regression = F.smooth_l1_loss(hidden.float(), last[:, targets])
        total = total + step_decay**s * (kd + feature_weight * regression)
        per_step.append(kd.item())
        own = hidden
    return total, per_step


def batches_of_equal_length(records: list) -> list[list]:
    """`records` grouped by chunk length, in order of first appearance (chunks of one length run as one batch)."""
    groups: dict[int, list] = {}
    for record in records:
        groups.setdefault(record["ids"].shape[0], []).append(record)
    return list(groups.values())


@torch.no_grad()
def agreement(drafter, records: list, unroll: int = 3) -> dict:
    """Greedy agreement with the target on cached (held-out) records, per kind and draft step.

    Returns `{kind: [step-0 agreement, step-1, ...]}`: step 0 reads the target's hidden states (the first draft of a
    round), step s > 0 the drafter's own predictions (the s-th later draft), over the full vocabulary.
    """
    model = unwrap_peft(drafter)
    head = model.get_output_embeddings()
    cap = logit_transform(model)
    device = head.weight.device
    hits: dict[str, list[int]] = {}
    totals: dict[str, list[int]] = {}
    for record in records:
        ids = record["ids"][None].to(device)
        truth = record["topk_ids"][:, 0].long().to(device)  # the target's greedy token after each position
        features = record["features"][None].to(device)
        own = None
        for s in range(unroll):
            n = ids.shape[1] - 1 - s
            if n < 1:
                break
            inputs = shifted_feature_inputs(model, ids, features=features if s == 0 else None, own=own, step=s)
            positions = torch.arange(s, s + n, device=device)[None]
            own = decoder_body(model)(inputs_embeds=inputs, position_ids=positions).last_hidden_state
            guess = softcap(head(own[0]).float(), cap).argmax(-1)
            kind = record["kind"]
            hits.setdefault(kind, [0] * unroll)[s] += int((guess == truth[1 + s : 1 + s + n]).sum())
            totals.setdefault(kind, [0] * unroll)[s] += n
    return {kind: [round(h / t, 4) if t else 0.0 for h, t in zip(hits[kind], totals[kind])] for kind in hits}


def decoder_linear_names(model) -> list[str]:
    """The names of the linear layers inside the drafter's decoder layers (its LoRA targets), e.g. `q_proj`."""
    from transformers.pytorch_utils import Conv1D

    names = set()
    for name, module in unwrap_peft(model).named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and (".layers." in name or ".h." in name):
            names.add(name.rsplit(".", 1)[-1])
    return sorted(names)


def train(
    drafter, records: list, accelerator, steps: int, batch_size: int, lr: float, state_path: Path, unroll: int = 3,
    negatives: int = 4096, feature_weight: float = 0.1, save_every: int = 25, seed: int = 0, progress: bool = True,
    time_budget_s: float | None = None,
) -> list[float]:  # fmt: skip
    """Trains the (peft-wrapped) drafter's trainable parameters on `records` for `steps` optimiser steps.

    Each process takes its own records of every batch, and the gradients are averaged across processes before each
    step (`accelerator.reduce`), so every process keeps the same weights; the main process saves the state (trainable weights, optimiser, schedule, step, losses) every `save_every` steps,
    atomically, and a restart continues from it. Returns the loss per step.

    `time_budget_s`: a wall-clock budget for this call (a lent GPU's lease, say). After timing its first steps, the
    run shortens `steps` to what fits, and the cosine schedule anneals over the shortened run; the plan is checked
    again every 20 steps against the latest pace.
    """
    from tqdm.auto import tqdm

    trainable = [p for p in drafter.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    warmup = max(1, min(50, steps // 10))
    total = [steps]  # shortened once if the time budget is too small for `steps`
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total[0]) / total[0])),
    )
    step, history = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        names = [n for n, p in drafter.named_parameters() if p.requires_grad]
        with torch.no_grad():
            for name, p in drafter.named_parameters():
                if name in state["weights"]:
                    p.copy_(state["weights"][name])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, history = state["step"], state["history"]
        total[0] = state.get("total_steps", steps)
        assert set(names) == set(state["weights"]), "the saved state is for another drafter"
    vocab_size = unwrap_peft(drafter).get_output_embeddings().weight.shape[0]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    drafter.train()
    bar = tqdm(total=total[0], initial=step, desc="distilling feature drafter", unit="step", disable=not progress)
    clock, first_step, timed_steps = time.monotonic(), step, 20
    lap = clock
    while step < total[0]:
        start = (step * batch_size) % len(records)
        batch = [records[int(order[(start + i) % len(records)])] for i in range(batch_size)]
        mine = batch[accelerator.process_index :: accelerator.num_processes]
        generator = torch.Generator().manual_seed(seed + step)
        negative_ids = torch.randint(0, vocab_size, (negatives,), generator=generator) if negatives else None
        loss = torch.zeros(())
        for group in batches_of_equal_length(mine):
            group_loss, _ = unrolled_loss(drafter, group, unroll, negative_ids, feature_weight)
            loss = loss + group_loss * len(group) / len(mine)
        optimizer.zero_grad()
        loss.backward()
        if accelerator.num_processes > 1:  # data parallel: every process steps with the batch's mean gradient
            for p in trainable:
                p.grad = accelerator.reduce(p.grad if p.grad is not None else torch.zeros_like(p), reduction="mean")
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        step += 1
        history.append(round(float(accelerator.reduce(loss.detach(), reduction="mean")), 4))
        bar.update()
        bar.set_postfix(loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}")
        if time_budget_s and (step - first_step) % timed_steps == 0:
            # re-planned every `timed_steps` steps from the latest pace (it changes when other work shares the
            # device); the run only ever shortens
            now = time.monotonic()
            pace = (now - lap) / timed_steps if step - first_step > timed_steps else (now - clock) / timed_steps
            lap = now
            fits = step + int((time_budget_s - (now - clock)) / pace)
            fits = int(accelerator.gather(torch.tensor([fits], device=accelerator.device)).min())  # one plan for all
            if fits < total[0]:
                total[0] = max(step, fits)
                bar.total = total[0]
                if step - first_step == timed_steps or total[0] == step:
                    print(f"time budget {time_budget_s:.0f} s: training {total[0]} steps of {steps}")
        if (step % save_every == 0 or step == total[0]) and accelerator.is_main_process:
            weights = {n: p.detach().cpu().clone() for n, p in drafter.named_parameters() if p.requires_grad}
            state = {"weights": weights, "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "step": step, "history": history, "total_steps": total[0]}  # fmt: skip
            torch.save(state, f"{state_path}.tmp")
            os.replace(f"{state_path}.tmp", state_path)
    bar.close()
    drafter.eval()
    accelerator.wait_for_everyone()
    return history
