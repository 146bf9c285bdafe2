"""Distils a small drafter from its target, on a 2-core CPU, resumably.

    evospec-hf distill --target gemma-3-270m --layers 2 --out checkpoints/gemma-3-270m-drafter-l2

The drafter is the target's first `--layers` decoder layers with the target's final norm and (frozen, shared) LM
head. It learns PEFT LoRA adapters on every linear layer of those decoder layers, by knowledge distillation on the
target's next-token distribution:

1. teacher: the target's top-k logits on training chunks (code, law, general, medical, from
   `evospec_hf.data`), cached in `<cache>/teacher-<target>-<seq_len>/` and shared by every depth;
2. train: loss = cross-entropy between the teacher's top-k distribution and the drafter's softmax over a sampled
   shortlist (the batch's teacher top-k ids plus random negatives). The full 262k-way softmax never runs, which keeps
   time and memory within a laptop-class CPU;
3. eval: greedy agreement with the target, teacher-forced, per domain on held-out text, before and after;
4. save: the adapter, `evospec_drafter.json` and `distill_report.json` in `--out`.

Every stage resumes where it stopped (teacher shards on disk, training state every `--save-every` steps).

`--kind feature` distils an EAGLE-style feature drafter instead (`evospec_hf.distill.feature`: the target's hidden
states and top-k logits cached, KD plus feature regression unrolled over draft steps), on the text mixture and the
target's own continuations (`--data mixture --continuations <folder of evospec-hf continuations>`):

    evospec-hf distill --kind feature --target gemma-3-270m --out runs/gemma-feature --steps 1800
    accelerate launch --multi_gpu --num_processes 8 -m evospec_hf.commands.distill --kind feature ...   # data-parallel
    accelerate launch --multi_gpu --num_processes 2 -m evospec_hf.commands.distill --kind feature ... --cpu   # CPU, gloo

(On CPU, accelerate's own `--cpu` launch flag starts a single process; pass `--multi_gpu` to accelerate and
`--cpu` to this script.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from evospec_hf.data import DOMAINS, load_domain_corpus, token_chunks
from evospec_hf.models import default_cache_dir, load_target
from evospec_hf.models.drafter import drafter_from_target
from evospec_hf.models.targets import target_label

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.no_grad()
def cache_teacher(target, chunks, cache_dir: Path, topk: int, shard_size: int = 8):
    """Writes shards of (domain, ids, top-k ids int32, top-k logits fp16); existing shards are kept (resume)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    shards = [chunks[i : i + shard_size] for i in range(0, len(chunks), shard_size)]
    for n, shard in enumerate(tqdm(shards, desc="teacher top-k (resumable)", unit="shard")):
        path = cache_dir / f"shard_{n:05d}.pt"
        if path.exists():
            continue
        records = []
        for domain, ids in shard:
            logits = target(ids[None]).logits[0].float()
            values, indices = logits.topk(topk, dim=-1)
            records.append({"domain": domain, "ids": ids, "topk_ids": indices.int(), "topk_logits": values.half()})
        torch.save(records, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    return sorted(cache_dir.glob("shard_*.pt"))


def kd_loss(drafter, head_weight, record_batch, negatives: int, vocab_size: int, generator):
    """Sampled-shortlist KD: teacher top-k distribution vs the drafter's softmax over (top-k ids + negatives)."""
    losses = []
    for rec in record_batch:
        ids = rec["ids"][None]
        hidden = drafter.base_model(input_ids=ids).last_hidden_state[0]  # (T, d)
        teacher_ids = rec["topk_ids"].long()  # (T, k)
        teacher_probs = rec["topk_logits"].float().softmax(-1)  # (T, k)
        candidates = torch.unique(torch.cat([teacher_ids.flatten(), torch.randint(0, vocab_size, (negatives,), generator=generator)]))
        logits = hidden @ head_weight.index_select(0, candidates).T  # (T, |candidates|)
        position = torch.searchsorted(candidates, teacher_ids)  # where each teacher id sits among the candidates
        log_q = logits.log_softmax(-1).gather(1, position)
        losses.append(-(teacher_probs * log_q).sum(-1).mean())
    return torch.stack(losses).mean()


@torch.no_grad()
def agreement(target, drafter, chunks) -> dict:
    """Share of positions where the drafter's greedy next token equals the target's, per domain (teacher-forced)."""
    hits, totals = {}, {}
    for domain, ids in tqdm(chunks, desc="agreement", unit="chunk", leave=False):
        t = target(ids[None]).logits[0].argmax(-1)
        d = drafter(ids[None]).logits[0].argmax(-1)
        hits[domain] = hits.get(domain, 0) + int((t == d).sum())
        totals[domain] = totals.get(domain, 0) + ids.numel()
    return {d: round(hits[d] / totals[d], 4) for d in totals}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf distill", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("token", "feature"), default="token",
                        help="token: the target's first layers reading tokens; feature: EAGLE-style (see above)")
    parser.add_argument("--target", default="gemma-3-270m", help="a known target name, or a local model folder")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--train-chunks", type=int, default=96, help="training chunks per domain")
    parser.add_argument("--eval-chunks", type=int, default=8, help="held-out chunks per domain")
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=4096)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=4, help="chunks per optimiser step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--save-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    feature = parser.add_argument_group("--kind feature")
    feature.add_argument("--feature-layers", default="-1",
                         help="the target hidden states the drafter reads (output_hidden_states indices), e.g. -1 "
                              "(the last), or 2,9,-1 (EAGLE-3's low, middle and high mix)")
    feature.add_argument("--unroll", type=int, default=3, help="draft steps trained per position (own states after 1)")
    feature.add_argument("--feature-weight", type=float, default=0.1, help="weight of the hidden-state regression")
    feature.add_argument("--steps", type=int, default=None, help="optimiser steps (default: from --epochs)")
    feature.add_argument("--time-budget", type=float, default=None,
                         help="minutes for the training steps (on a lent GPU, say): fewer steps if --steps does not fit")
    feature.add_argument("--finish-by", type=float, default=None, metavar="UNIX_TIME",
                         help="end the training steps in time to evaluate and save by this clock time (a lease's "
                              "end): sets --time-budget once the teacher cache is ready")
    feature.add_argument("--data", default="mixture", choices=("mixture", "domains"),
                         help="mixture: every kind of text in evospec_hf.data plus --continuations; domains: the four "
                              "domain corpora only")
    feature.add_argument("--continuations", default=None, help="a folder of target continuations to train on too")
    feature.add_argument("--chunks-file", default=None,
                         help="a torch file {'train': [(kind, ids)], 'heldout': [...]} used instead of corpora")
    feature.add_argument("--export-chunks", default=None, metavar="FILE",
                         help="write the token chunks (as --chunks-file reads them) to FILE and stop: for a machine "
                              "that has the target but not the corpora, e.g. a lent GPU")
    feature.add_argument("--prompts-per-kind", type=int, default=0,
                         help="with --export-chunks: also write this many prompts of each kind (from the train split), "
                              "for --continuation-tokens on the machine that reads the file")
    feature.add_argument("--continuation-tokens", type=int, default=0,
                         help="generate the target's greedy continuations (this many new tokens) of the chunks file's "
                              "prompts here, batched, and train on them too (kept in --out: resumes)")
    feature.add_argument("--generation-batch", type=int, default=64, help="prompts per generate call")
    feature.add_argument("--init-adapter", default=None, metavar="DIR",
                         help="start from this feature checkpoint's adapter (a folder EvoSpecDrafter saved) instead "
                              "of a fresh one: continue training a shipped drafter on more text")
    feature.add_argument("--target-name", default=None,
                         help="the target name recorded in the checkpoint (default: --target, or its folder's name)")
    feature.add_argument("--no-static-table", action="store_true", help="do not build the static shortlist table")
    feature.add_argument("--cpu", action="store_true", help="run on CPU even when a GPU is present")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kind == "feature":
        return main_feature(args)
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    target, tokenizer = load_target(args.target)
    for p in target.parameters():
        p.requires_grad_(False)

    train_chunks = token_chunks(tokenizer, "train", args.seq_len, args.train_chunks, args.seed)
    eval_chunks = token_chunks(tokenizer, "heldout", args.seq_len, args.eval_chunks, args.seed)
    teacher_dir = default_cache_dir() / f"teacher-{args.target}-{args.seq_len}-{args.train_chunks}-{args.topk}"
    shard_paths = cache_teacher(target, train_chunks, teacher_dir, args.topk)
    records = [r for path in shard_paths for r in torch.load(path)]

    drafter = drafter_from_target(target, args.layers)
    report_path = out / "distill_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if "agreement_before" not in report:
        report["agreement_before"] = agreement(target, drafter, eval_chunks)
        report_path.write_text(json.dumps(report, indent=2))
    print("agreement before:", report["agreement_before"])

    lora = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=LORA_TARGETS, lora_dropout=0.0)
    model = get_peft_model(drafter, lora)
    head_weight = target.get_output_embeddings().weight.detach()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    total_steps = math.ceil(len(records) * args.epochs / args.batch)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    state_path = out / "train_state.pt"
    step, history = 0, []
    if state_path.exists():  # resume
        state = torch.load(state_path, weights_only=False)
        set_peft_model_state_dict(model, state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, history = state["step"], state["history"]
    gen = torch.Generator().manual_seed(args.seed + step)
    order = torch.randperm(len(records) * math.ceil(args.epochs), generator=torch.Generator().manual_seed(args.seed))
    order = (order % len(records)).tolist()
    model.train()
    start = time.time()
    with tqdm(total=total_steps, initial=step, desc=f"distilling {args.layers}-layer drafter", unit="step") as bar:
        while step < total_steps:
            batch = [records[i] for i in order[step * args.batch : (step + 1) * args.batch]]
            # `drafter` is the model peft injected its LoRA layers into: its decoder body runs them
            loss = kd_loss(drafter, head_weight, batch, args.negatives, head_weight.shape[0], gen)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            history.append(round(loss.item(), 4))
            bar.update()
            bar.set_postfix(loss=f"{sum(history[-10:]) / len(history[-10:]):.3f}")
            if step % args.save_every == 0 or step == total_steps:
                state = {
                    "adapter": get_peft_model_state_dict(model), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "step": step, "history": history,
                }  # fmt: skip
                torch.save(state, f"{state_path}.tmp")
                os.replace(f"{state_path}.tmp", state_path)
    model.eval()
    report["train_seconds_this_run"] = round(time.time() - start, 1)
    report["agreement_after"] = agreement(target, model, eval_chunks)
    print("agreement after:", report["agreement_after"])
    report.update(
        target=args.target, layers=args.layers, lora_rank=args.lora_rank, steps=step, seq_len=args.seq_len,
        train_chunks_per_domain=args.train_chunks, eval_chunks_per_domain=args.eval_chunks, topk=args.topk,
        negatives=args.negatives, loss_first=history[:5], loss_last=history[-5:],
    )  # fmt: skip
    report_path.write_text(json.dumps(report, indent=2))
    save_checkpoint(model, tokenizer, out, args.target, report)
    print(f"saved to {out}")


def training_chunks(args, tokenizer) -> tuple[list, list]:
    """(train, heldout) lists of `(kind, ids)`: `--chunks-file`, else the corpora (and continuations)."""
    if args.chunks_file:
        chunks = torch.load(args.chunks_file)
        return [(k, ids.long()) for k, ids in chunks["train"]], [(k, ids.long()) for k, ids in chunks["heldout"]]
    if args.data == "domains":
        return (
            token_chunks(tokenizer, "train", args.seq_len, args.train_chunks, args.seed),
            token_chunks(tokenizer, "heldout", args.seq_len, args.eval_chunks, args.seed),
        )
    from evospec_hf import data

    train = data.mixture_chunks(tokenizer, "train", args.seq_len, args.train_chunks, args.seed)
    heldout = data.mixture_chunks(tokenizer, "heldout", args.seq_len, args.eval_chunks, args.seed)
    if args.continuations:
        train += data.continuation_chunks(args.continuations)
    return train, heldout


def continuations_here(args, target, tokenizer, accelerator, out: Path) -> list:
    """The target's greedy continuations of the chunks file's prompts, generated on this machine in batches, as
    training chunks `(kind, ids)` of `--seq-len` tokens (prompt + continuation, one after another). Each process generates its share of the prompts and keeps it
    in `out` (a restart reuses it); every process returns all of them."""
    from evospec_hf.data.continuations import greedy_continuations

    prompts = torch.load(args.chunks_file).get("prompts", [])
    if not prompts:
        raise SystemExit(f"{args.chunks_file} has no prompts: export it with --prompts-per-kind")
    rank, world = accelerator.process_index, accelerator.num_processes
    path = out / f"continuations-{args.continuation_tokens}-{rank}-of-{world}.pt"
    if not path.exists():
        mine = prompts[rank::world]
        mine = sorted(mine, key=lambda p: len(p[1]))  # similar lengths together: less padding
        rows = []
        for i in tqdm(range(0, len(mine), args.generation_batch), desc=f"continuations (process {rank})",
                      unit="batch", disable=not accelerator.is_main_process):  # fmt: skip
            batch = mine[i : i + args.generation_batch]
            new = greedy_continuations(target, tokenizer, [p.tolist() for _, p in batch], args.continuation_tokens)
            rows += [(kind, torch.cat([p.long(), torch.tensor(n, dtype=torch.long)]))
                     for (kind, p), n in zip(batch, new) if n]  # fmt: skip
        torch.save(rows, f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
    accelerator.wait_for_everyone()
    shares = [out / f"continuations-{args.continuation_tokens}-{r}-of-{world}.pt" for r in range(world)]
    rows = [row for share in shares for row in torch.load(share)]
    # one stream per kind cut into --seq-len chunks: training batches are of one length (continuations that met
    # EOS early would otherwise make a length of their own each)
    chunks = []
    for kind in sorted({k for k, _ in rows}):
        stream = torch.cat([ids for k, ids in rows if k == kind])
        chunks += [(kind, piece) for piece in stream.split(args.seq_len) if len(piece) == args.seq_len]
    print(f"{len(rows)} continuations of {len(prompts)} prompts: {len(chunks)} chunks of {args.seq_len} tokens")
    return chunks


def main_feature(args):
    """`--kind feature`: an EAGLE-style drafter (`evospec_hf.distill.feature`), data-parallel under accelerate."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model

    from evospec_hf.distill.feature import agreement, cache_teacher, decoder_linear_names, train
    from evospec_hf.models import feature_drafter_from_target

    accelerator = Accelerator(cpu=args.cpu)
    main_process = accelerator.is_main_process
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    target, tokenizer = load_target(args.target, tokenizer_required=False)  # `--chunks-file` holds token ids
    target.to(accelerator.device)
    for p in target.parameters():
        p.requires_grad_(False)
    layers = [int(i) for i in args.feature_layers.split(",")]
    name = args.target_name or target_label(args.target)
    train_chunks, eval_chunks = training_chunks(args, tokenizer)
    if args.export_chunks:
        # int32 ids: half the bytes for a file that travels (training_chunks reads them back as int64)
        exported = {"train": [(k, ids.int()) for k, ids in train_chunks],
                    "heldout": [(k, ids.int()) for k, ids in eval_chunks]}  # fmt: skip
        if args.prompts_per_kind:
            from evospec_hf.data.continuations import ContinuationConfig, select_prompts

            config = ContinuationConfig(target=name, per_kind=args.prompts_per_kind, seed=args.seed)
            exported["prompts"] = [(p.kind, torch.tensor(p.input_ids, dtype=torch.int32))
                                   for p in select_prompts(tokenizer, config)]  # fmt: skip
        torch.save(exported, args.export_chunks)
        print(f"wrote {len(train_chunks)} training and {len(eval_chunks)} held-out chunks"
              f" and {len(exported.get('prompts', []))} prompts to {args.export_chunks}")  # fmt: skip
        return
    if args.continuation_tokens:
        train_chunks += continuations_here(args, target, tokenizer, accelerator, out)
    source = Path(args.chunks_file).stem if args.chunks_file else f"{args.data}-{args.train_chunks}"
    if args.continuations:
        source += f"-{Path(args.continuations).name}"
    if args.continuation_tokens:
        source += f"-own{args.continuation_tokens}"
    teacher = default_cache_dir() / f"feature-teacher-v2-{name}-{args.seq_len}-{source}-{'_'.join(map(str, layers))}-{args.topk}"
    rank, world = accelerator.process_index, accelerator.num_processes
    train_paths = cache_teacher(target, train_chunks, teacher / "train", layers, args.topk, rank=rank, world_size=world)
    eval_paths = cache_teacher(target, eval_chunks, teacher / "heldout", layers, args.topk, rank=rank, world_size=world)
    accelerator.wait_for_everyone()  # every process's shards are written
    records = [r for path in train_paths for r in torch.load(path)]
    eval_records = [r for path in eval_paths for r in torch.load(path)]

    drafter = feature_drafter_from_target(target, args.layers, layers).to(accelerator.device)
    if args.init_adapter:  # continue a shipped drafter: its LoRA weights and input projections, trainable
        from peft import PeftModel

        model = PeftModel.from_pretrained(drafter, Path(args.init_adapter) / "adapter", is_trainable=True)
        args.lora_rank = model.peft_config["default"].r
    else:
        lora = LoraConfig(
            r=args.lora_rank, lora_alpha=args.lora_rank, target_modules=decoder_linear_names(drafter),
            lora_dropout=0.0, modules_to_save=["evospec_fuse", "evospec_combine"],
        )  # fmt: skip
        model = get_peft_model(drafter, lora)
    report_path = out / "distill_report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if main_process and "agreement_before" not in report:  # a fresh adapter is the identity: the bare drafter
        report["agreement_before"] = agreement(model, eval_records, args.unroll)
        report_path.write_text(json.dumps(report, indent=2))
    steps = args.steps or math.ceil(len(records) * args.epochs / args.batch)
    start = time.time()
    if args.finish_by:  # what is left of the lease, less a minute to evaluate and save
        args.time_budget = min(args.time_budget or math.inf, (args.finish_by - start - 60) / 60)
        print(f"--finish-by: {args.time_budget:.1f} minutes for the training steps")
        if args.time_budget <= 0:
            raise SystemExit("--finish-by leaves no time to train")
    history = train(
        model, records, accelerator, steps, args.batch, args.lr, out / "train_state.pt", unroll=args.unroll,
        negatives=args.negatives, feature_weight=args.feature_weight, save_every=args.save_every, seed=args.seed,
        progress=main_process, time_budget_s=args.time_budget * 60 if args.time_budget else None,
    )  # fmt: skip
    if not main_process:
        return
    model.eval()
    report["agreement_after"] = agreement(model, eval_records, args.unroll)
    report["train_seconds_this_run"] = round(time.time() - start, 1)
    report.update(
        kind="feature", target=name, layers=args.layers, feature_layers=layers, lora_rank=args.lora_rank, steps=len(history),
        seq_len=args.seq_len, train_chunks=len(records), eval_chunks=len(eval_records), topk=args.topk,
        negatives=args.negatives, unroll=args.unroll, feature_weight=args.feature_weight, processes=world,
        batch=args.batch, device=torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu",
        teacher_cache=str(teacher), init_adapter=args.init_adapter, continuation_tokens=args.continuation_tokens,
        loss_first=history[:5], loss_last=history[-5:],
    )  # fmt: skip
    report_path.write_text(json.dumps(report, indent=2))
    print("agreement (per kind, per draft step) before:", report["agreement_before"])
    print("after:", report["agreement_after"])
    table = None
    if tokenizer is not None and not args.no_static_table:
        table = frequency_table_for(tokenizer, target.get_output_embeddings().weight.shape[0])
    from evospec_hf import EvoSpecDrafter

    EvoSpecDrafter.save_pretrained(model, out, name, table, feature_model_card(report))
    print(f"saved to {out}")


def feature_model_card(report: dict) -> str:
    steps = len(next(iter(report["agreement_after"].values())))
    header = " | ".join(f"draft {s + 1} before | after" for s in range(steps))
    rows = "\n".join(
        f"| {kind} | "
        + " | ".join(f"{report['agreement_before'].get(kind, [0] * steps)[s]:.1%} | {after[s]:.1%}" for s in range(steps))
        + " |"
        for kind, after in report["agreement_after"].items()
    )
    continued = ""
    if report.get("init_adapter"):  # "before" is then the adapter the run started from
        continued = (f" The run continued an earlier one ({len(report.get('previous_runs', []))} before it, "
                     "in `distill_report.json`): the 'before' columns are the adapter it started from.")  # fmt: skip
    return f"""---
library_name: evospec_hf
tags: [speculative-decoding, drafter, eagle, lora]
---
# evospec_hf feature drafter for {report['target']}

An EAGLE-style drafter: the last {report['layers']} decoder layer(s) of {report['target']}, reading at each position the
target's own hidden states (layers {report['feature_layers']}) together with the next token's embedding, then the
target's final norm and (shared, frozen) LM head. Distilled by `evospec-hf distill --kind feature`: LoRA
(rank {report['lora_rank']}) and the two input projections, top-{report['topk']} KD plus hidden-state regression,
unrolled over {report['unroll']} draft steps; {report['steps']} steps of {report.get('batch', '?')} chunks
on {report.get('device', 'cpu')}, {report['train_chunks']} chunks of {report['seq_len']} tokens.{continued}

Greedy agreement with the target on held-out text ({report['eval_chunks']} chunks): the first draft of a round reads
the target's hidden state; later drafts read the drafter's own.

| kind | {header} |
|---|{"---:|" * (2 * steps)}
{rows}

```python
import evospec_hf
drafter = evospec_hf.EvoSpecDrafter.from_pretrained("<this folder or repo>", target=model)
out = model.generate(**inputs, assistant_model=drafter, evospec_config=evospec_hf.EvoSpecConfig(shortlist="evospec"))
```

The output equals the target's plain greedy output; the drafter only changes speed.

**Licence:** a derivative of {report['target']}; the target's licence applies (see the evospec_hf README).
"""


def frequency_table_for(tokenizer, vocab_size: int):
    """The static (FR-Spec) list shipped with the drafter: token counts over every domain's train split."""
    from datasets import concatenate_datasets

    from evospec_hf.vocab import build_frequency_table

    corpus = concatenate_datasets([load_domain_corpus(d, "train") for d in DOMAINS])
    return build_frequency_table(tokenizer, corpus, vocab_size=vocab_size, source="evospec_hf.data train splits: " + ", ".join(DOMAINS))


def model_card(report: dict) -> str:
    rows = "\n".join(
        f"| {d} | {report['agreement_before'][d]:.1%} | {report['agreement_after'][d]:.1%} |" for d in report["agreement_after"]
    )
    return f"""---
library_name: evospec_hf
tags: [speculative-decoding, drafter, lora]
---
# evospec_hf drafter for {report['target']}

The first {report['layers']} decoder layers of {report['target']}, with its final norm and (shared, frozen) LM head, plus
a LoRA adapter (rank {report['lora_rank']}) distilled by `evospec-hf distill` on the target's top-{report['topk']}
next-token distribution ({report['steps']} steps, {report['train_chunks_per_domain']} chunks of {report['seq_len']} tokens
per domain from evospec_hf.data's train splits).

Greedy agreement with the target, teacher-forced, on held-out text ({report['eval_chunks_per_domain']} chunks per domain):

| domain | before distillation | after |
|---|---:|---:|
{rows}

```python
import evospec_hf
drafter = evospec_hf.EvoSpecDrafter.from_pretrained("<this folder or repo>", target=model)
out = model.generate(**inputs, assistant_model=drafter,
                     evospec_config=evospec_hf.EvoSpecConfig(shortlist="static", shortlist_size=16384))
```

The output equals the target's plain greedy output; the drafter only changes speed: measure it on your prompts
with `examples/quickstart.py --checkpoint <this folder>`.

**Licence:** a derivative of {report['target']}; the target's licence applies (see the evospec_hf README).
"""


def save_checkpoint(model, tokenizer, out: Path, target_name: str, report: dict) -> None:
    from evospec_hf import EvoSpecDrafter

    vocab_size = model.get_base_model().get_output_embeddings().weight.shape[0]
    table = frequency_table_for(tokenizer, vocab_size)
    EvoSpecDrafter.save_pretrained(model, out, target_name, table, model_card(report))


if __name__ == "__main__":
    main()
