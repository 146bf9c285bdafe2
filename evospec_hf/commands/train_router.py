"""Trains the DynaSpec cluster router of a drafter checkpoint, and reports shortlist recall.

    evospec-hf train-router --checkpoint checkpoints/gemma-3-270m-drafter-l2

1. clusters: faiss k-means over the target's LM-head rows, sizes bounded (see evospec_hf/vocab/clusters.py);
2. data: the drafter's final hidden states on the distillation chunks, labelled with the target's top-k next-token
   distribution (the teacher cache written by `evospec-hf distill`) summed per cluster;
3. train: a light classifier from hidden state to cluster, cross-entropy on those soft labels;
4. recall: on held-out text, the share of the target's greedy next tokens inside the shortlist, per domain and
   budget, for the router, router + context tokens, the static list, and static + context;
5. save: `evospec_router.json`, `evospec_router.safetensors`, `evospec_clusters.safetensors` and
   `router_report.json` into the checkpoint.

`shortlist="evospec"` also needs the semantic index (`evospec-hf build-semantic-index`); the recall of every mode,
simulated round by round as generation builds the shortlist, is `benchmarks/shortlist_recall.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from evospec_hf import EvoSpecDrafter, FrequencyTable
from evospec_hf.data import token_chunks
from evospec_hf.models import default_cache_dir, load_target
from evospec_hf.models.drafter import shifted_feature_inputs
from evospec_hf.models.targets import target_label
from evospec_hf.utils import unwrap_peft
from evospec_hf.vocab.clusters import cluster_vocabulary
from evospec_hf.vocab.recall import drafter_hidden_states as hidden_states
from evospec_hf.vocab.recall import target_greedy_next
from evospec_hf.vocab.router import ClusterRouter, RoutedHead


@torch.no_grad()
def record_hidden_states(drafter, rec: dict) -> tuple[torch.Tensor, slice]:
    """The drafter's hidden states on a cached teacher record, and the record's positions they predict from.

    A token drafter reads the tokens (every position); a feature drafter reads the target's cached hidden states
    with the next tokens, so it has no state at position 0."""
    if "features" not in rec:
        return hidden_states(drafter, rec["ids"]), slice(None)
    model = unwrap_peft(drafter)
    pairs = shifted_feature_inputs(model, rec["ids"][None], features=rec["features"][None].float())
    return model.base_model(inputs_embeds=pairs).last_hidden_state[0], slice(1, None)


@torch.no_grad()
def recall_report(target, drafter, routed: RoutedHead, table: FrequencyTable, chunks, budgets) -> dict:
    """Recall of the target's greedy next token, per domain and budget, for four shortlists."""
    counts = {}
    for domain, ids in tqdm(chunks, desc="recall on held-out text", unit="chunk"):
        truth = target_greedy_next(target, ids)  # (T,) next token after each position
        hidden = hidden_states(drafter, ids, target)
        # the clusters generation would pick at each position, within each budget (`RoutedHead.holds`)
        routed_hits = {budget: routed.holds(hidden, truth, budget).tolist() for budget in budgets}
        static_rank = torch.full((table.vocab_size,), table.vocab_size, dtype=torch.long)
        static_rank[table.token_ids] = torch.arange(table.token_ids.numel())
        for t in range(ids.numel()):
            seen = set(ids[: t + 1].tolist())
            in_context = int(truth[t]) in seen
            for budget in budgets:
                routed_hit = routed_hits[budget][t]
                static_hit = int(static_rank[truth[t]]) < budget
                row = counts.setdefault((domain, budget), [0, 0, 0, 0, 0])
                row[0] += 1
                row[1] += routed_hit
                row[2] += routed_hit or in_context
                row[3] += static_hit
                row[4] += static_hit or in_context
    report = {}
    for (domain, budget), (n, router, router_ctx, static, static_ctx) in sorted(counts.items()):
        report.setdefault(domain, {})[str(budget)] = {
            "router": round(router / n, 4), "router+context": round(router_ctx / n, 4),
            "static": round(static / n, 4), "static+context": round(static_ctx / n, 4), "positions": n,
        }  # fmt: skip
    return report


def update_model_card(card_path: Path, report: dict) -> None:
    """Adds (or replaces) the router section of the checkpoint's model card."""
    marker = "\n## DynaSpec router\n"
    card = card_path.read_text() if card_path.exists() else ""
    card = card.split(marker)[0].rstrip() + "\n"
    lines = [
        marker,
        f"{report['clusters']} token clusters (faiss k-means on LM-head rows, sizes {report['cluster_size_min']}.."
        f"{report['cluster_size_max']}); router trained on {report['train_positions']:,} positions. Recall of the "
        "target's greedy next token on held-out text:\n",
        "| domain | budget | router | router+context | static | static+context |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for domain, rows in report["recall"].items():
        for budget, r in rows.items():
            lines.append(
                f"| {domain} | {budget} | {r['router']:.1%} | {r['router+context']:.1%} | {r['static']:.1%} | "
                f"{r['static+context']:.1%} |"
            )
    card_path.write_text(card + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="evospec-hf train-router", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--target", default=None,
                        help="a known target name or a local model folder (default: the target the checkpoint records)")
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--max-cluster-size", type=int, default=None, help="default: twice the mean")
    parser.add_argument("--inner-size", type=int, default=0, help="router hidden layer width (0: linear)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-chunks", type=int, default=4, help="held-out chunks per domain for recall")
    parser.add_argument("--budgets", default="1024,4096,16384")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-cache", default=None,
                        help="a feature teacher cache folder to train on (default: the one distill_report.json names; "
                             "e.g. a local one when the drafter was distilled on another machine)")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    folder = Path(args.checkpoint)
    config = EvoSpecDrafter.read_config(folder)
    distill = json.loads((folder / "distill_report.json").read_text())
    target, tokenizer = load_target(args.target or config["target"])
    drafter = EvoSpecDrafter.from_pretrained(folder, target=target)
    head = target.get_output_embeddings().weight.detach()

    start = time.time()
    clusters = cluster_vocabulary(head, args.clusters, args.max_cluster_size, seed=args.seed)
    print(f"clustered {head.shape[0]:,} tokens into {clusters.num_clusters} clusters in {time.time() - start:.0f} s; "
          f"sizes {int(clusters.sizes().min())}..{int(clusters.sizes().max())}")  # fmt: skip

    if args.teacher_cache:
        teacher_dir = Path(args.teacher_cache) / "train"
    elif distill.get("kind") == "feature":  # the feature drafter's teacher cache holds the target's hidden states
        teacher_dir = Path(distill["teacher_cache"]) / "train"
    else:
        label = target_label(config["target"])
        teacher_dir = default_cache_dir() / (
            f"teacher-{label}-{distill['seq_len']}-{distill['train_chunks_per_domain']}-{distill['topk']}"
        )
    shards = sorted(teacher_dir.glob("shard_*.pt"))
    if not shards:
        raise SystemExit(f"no teacher cache in {teacher_dir}: run evospec-hf distill first")
    features, labels = [], []
    for path in tqdm(shards, desc="drafter hidden states", unit="shard"):
        for rec in torch.load(path):
            hidden, rows = record_hidden_states(drafter, rec)
            features.append(hidden)
            probs = rec["topk_logits"][rows].float().softmax(-1)
            label = torch.zeros(probs.shape[0], clusters.num_clusters)
            label.scatter_add_(1, clusters.cluster_of[rec["topk_ids"][rows].long()], probs)
            labels.append(label)
    features, labels = torch.cat(features), torch.cat(labels)

    router = ClusterRouter(head.shape[1], clusters.num_clusters, args.inner_size)
    optimizer = torch.optim.AdamW(router.parameters(), lr=args.lr)
    batch = 1024
    for epoch in tqdm(range(args.epochs), desc="training router", unit="epoch"):
        perm = torch.randperm(features.shape[0])
        total = 0.0
        for i in range(0, features.shape[0], batch):
            idx = perm[i : i + batch]
            loss = -(labels[idx] * F.log_softmax(router(features[idx]), -1)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * idx.numel()
        tqdm.write(f"epoch {epoch + 1}: loss {total / features.shape[0]:.3f}")
    router.eval()

    budgets = [int(b) for b in args.budgets.split(",")]
    routed = RoutedHead(router, clusters, head, None)
    table = FrequencyTable.load(folder, vocab_size=head.shape[0])
    eval_chunks = token_chunks(tokenizer, "heldout", distill["seq_len"], args.eval_chunks, args.seed + 1)
    report = {
        "clusters": clusters.num_clusters, "cluster_size_min": int(clusters.sizes().min()),
        "cluster_size_max": int(clusters.sizes().max()), "router_inner_size": args.inner_size,
        "train_positions": int(features.shape[0]), "epochs": args.epochs, "teacher_cache": teacher_dir.parent.name,
        "recall": recall_report(target, drafter, routed, table, eval_chunks, budgets),
    }  # fmt: skip
    clusters.save(folder)
    router.save(folder)
    (folder / "router_report.json").write_text(json.dumps(report, indent=2))
    update_model_card(folder / "README.md", report)
    for domain, rows in report["recall"].items():
        for budget, r in rows.items():
            print(f"{domain:<8} {budget:>6}: " + "  ".join(f"{k} {v:.1%}" for k, v in r.items() if k != "positions"))
    print(f"saved router to {folder}")


if __name__ == "__main__":
    main()
