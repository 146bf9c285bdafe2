"""Training HiSpec's exit head (`evospec_hf.models.exit_head.ExitHead`): the target's own next-token distribution,
taught to the hidden states after its first `layer` layers.

The teacher is the feature distillation's cache (`evospec_hf.distill.feature.cache_teacher` with `feature_layers=
[layer]`): the hidden states after `layer` layers and the target's top-k logits, per position. A position's input is
the target's final norm of its hidden state (what the intermediate verifier's shallow body returns), its loss the
top-k KD of `evospec_hf.evolve.kd.topk_kd_loss` over the batch's top-k ids and random negatives.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..evolve.kd import topk_kd_loss
from ..ops.softcap import logit_transform, softcap
from ..utils import decoder_body


def final_norm(target):
    """The target's final norm module (what its base model applies after the last layer)."""
    base = decoder_body(target)
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm"):
        if isinstance(getattr(base, name, None), torch.nn.Module):
            return getattr(base, name)
    raise ValueError(f"cannot find the final norm of {type(target).__name__}")


@torch.no_grad()
def exit_agreement(target, head, records: list) -> dict:
    """Per kind: the share of positions where the exit's argmax over the teacher's top-k ids is the target's
    argmax (the top-k ids hold the target's argmax, and an exit prediction outside them disagrees anyway)."""
    norm, weight = final_norm(target), target.get_output_embeddings().weight
    cap, hits, totals = logit_transform(target), {}, {}
    for record in records:
        hidden = head(norm(record["features"].to(weight.device, weight.dtype)))
        ids = record["topk_ids"].long().to(weight.device)
        logits = softcap(torch.einsum("pd,pkd->pk", hidden, weight[ids]), cap)
        best = ids.gather(1, logits.argmax(-1, keepdim=True))[:, 0]
        hits[record["kind"]] = hits.get(record["kind"], 0) + int((best == ids[:, 0]).sum())
        totals[record["kind"]] = totals.get(record["kind"], 0) + ids.shape[0]
    return {kind: round(hits[kind] / totals[kind], 4) for kind in totals}


def train_exit_head(
    target, head, records: list, steps: int, batch_size: int, lr: float, state_path: Path, negatives: int = 4096,
    save_every: int = 50, seed: int = 0, progress: bool = True,
) -> list[float]:  # fmt: skip
    """Trains `head` on teacher `records` for `steps` Adam steps of `batch_size` chunks; resumes from `state_path`
    (written atomically every `save_every` steps). Returns the loss per step."""
    from tqdm.auto import tqdm

    norm = final_norm(target)
    weight = target.get_output_embeddings().weight.detach()
    bias = getattr(target.get_output_embeddings(), "bias", None)
    cap = logit_transform(target)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    step, history = 0, []
    if state_path.exists():
        state = torch.load(state_path, weights_only=False, map_location="cpu")
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, history = state["step"], state["history"]
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed))
    bar = tqdm(total=steps, initial=step, desc="exit head", unit="step", disable=not progress)
    head.train()
    while step < steps:
        batch = [records[int(order[(step * batch_size + i) % len(records)])] for i in range(batch_size)]
        with torch.no_grad():
            hidden = norm(torch.cat([r["features"] for r in batch]).to(weight.device, weight.dtype))
        ids = torch.cat([r["topk_ids"] for r in batch]).long().to(weight.device)
        logits = torch.cat([r["topk_logits"] for r in batch]).float().to(weight.device)
        generator = torch.Generator().manual_seed(seed + step)
        extra = torch.randint(0, weight.shape[0], (negatives,), generator=generator) if negatives else None
        loss = topk_kd_loss(head(hidden), weight, bias, ids, logits, negatives=extra, softcap=cap)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        step += 1
        history.append(round(float(loss), 4))
        bar.update()
        bar.set_postfix(loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}")
        if step % save_every == 0 or step == steps:
            state = {"head": head.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "step": step, "history": history, "saved": time.time()}  # fmt: skip
            torch.save(state, f"{state_path}.tmp")
            os.replace(f"{state_path}.tmp", state_path)
    bar.close()
    head.eval()
    return history
