"""Every architecture of transformers' causal-LM auto mapping, built tiny from its config: does evospec_hf give plain
greedy's tokens, or refuse it up front with a message naming the architecture?

    nice -n 10 python benchmarks/zoo.py [--out results/zoo] [--only llama cohere ...] [--timeout 300]

For each `model_type` in `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, one subprocess (so that a bad config cannot take the
others down) builds the model from a small config (hidden 64, 2 layers, 4 heads, vocabulary 256; `SMALL`, plus
`OVERRIDES` per type), seeded, and two drafters from it: the target's weights plus small noise (it agrees often)
and the same architecture with other weights, scaled (its drafts are mostly rejected: the cache is rolled back).
It runs plain greedy (`do_sample=False`, `NEW_TOKENS` new tokens) and evospec_hf greedy with each drafter
(`CONFIG`), and sorts the result into one class:

- exact: evospec_hf's tokens are plain greedy's, with both drafters;
- different: they are not (a bug);
- refused: evospec_hf raised before any forward pass of target or drafter, naming the `model_type`;
- error: anything else (a raw error, or a refusal that came late or does not name the architecture);
- skipped: the tiny config does not build, or plain greedy itself fails.

Writes `--out`/results.json and `--out`/results.md (the table, the machine, the versions and this command).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

CLASSES = ("exact", "different", "refused", "error", "skipped")
NEW_TOKENS = 12
PROMPT_LENGTH = 10
VOCAB_SIZE = 256

# the test-style tiny settings, each applied where the config class has that field
SMALL = dict(
    vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    # mixture of experts
    num_experts=4, num_local_experts=4, n_routed_experts=4, moe_num_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=32, shared_expert_intermediate_size=32, n_shared_experts=1, first_k_dense_replace=1,
    n_group=1, topk_group=1, rotary_dim=8,
    # linear-attention and state-space layers of hybrid models
    linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
    linear_head_dim=16, linear_num_heads=4,
    # multi-head latent attention (DeepSeek)
    kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16,
    # encoder-style and older names
    d_model=64, encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, is_decoder=True,
)  # fmt: skip

# per model_type: fields on top of SMALL (a value of None drops a SMALL field the config must not get)
ROPE = {"rope_type": "default", "rope_theta": 10000.0}
QSA = dict(indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=16, indexer_budget=16, indexer_compress_ratio=4)
HYBRID = dict(layer_types=["linear_attention", "full_attention"])
SCALED = dict(logits_scaling=4.0)  # a logit scale that is not 1, so that drafting through it is checked
# hybrid models get one attention layer of two: with none, plain greedy's cache has no length
OVERRIDES: dict[str, dict] = {
    "bamba": dict(attn_layer_indices=[1]),
    "bailing_hybrid": dict(layer_group_size=2),
    "cohere_compass_text": dict(rope_parameters={"full_attention": ROPE, "sliding_attention": ROPE}),
    "dots3_note": dict(num_key_value_heads=4),
    "dots3_note_text": dict(num_key_value_heads=4),
    "fuyu": dict(text_config=dict(
        model_type="persimmon", vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )),
    "gemma3n_text": dict(num_kv_shared_layers=0, vocab_size_per_layer_input=VOCAB_SIZE, hidden_size_per_layer_input=8),
    "gpt_neo": dict(attention_types=[[["global", "local"], 1]]),
    "granite": SCALED,
    "granite_swa": SCALED,
    "granitemoe": SCALED,
    "granitemoe_swa": SCALED,
    "granitemoeshared": SCALED,
    "hyperclovax": dict(logits_scaling=0.3),
    "granitemoehybrid": dict(layer_types=["mamba", "attention"], **SCALED),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1),
    "kimi_linear": HYBRID,
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=1),
    "lfm3": dict(layer_types=["conv", "full_attention"]),
    "longcat_flash": dict(num_layers=2, head_dim=8),  # its rotary dimension
    "mamba2": dict(num_heads=8, n_groups=1),
    "moshi": dict(audio_vocab_size=64),
    "qwen3_5": HYBRID,
    "qwen3_5_moe": HYBRID,
    "qwen4_exp": dict(**HYBRID, **QSA),
    "qwen3_5_text": HYBRID,
    "qwen3_5_moe_text": HYBRID,
    "qwen3_next": HYBRID,
    "qwen4_exp_text": dict(**HYBRID, **QSA),
    "musicgen": dict(num_codebooks=1, decoder_start_token_id=1),
    "musicgen_melody": dict(num_codebooks=1, decoder_start_token_id=1),
    "dbrx": dict(attn_config=dict(rope_theta=10000.0, clip_qkv=8.0)),
    "recurrent_gemma": dict(block_types=["recurrent", "attention"]),
    "reformer": dict(axial_pos_embds_dim=[32, 32], axial_pos_shape=[16, 32], max_position_embeddings=512),
    "xlnet": dict(d_head=16),
    "xlstm": dict(num_heads=4, qk_dim_factor=1.0),
    "xmod": dict(default_language="en_XX"),
    "zamba": dict(num_hidden_layers=3, layers_block_type=["mamba", "hybrid", "hybrid"]),  # its shared block: twice
    "zamba2": dict(layers_block_type=["mamba", "hybrid"]),
    "zaya": dict(num_experts_per_tok=1),
}


def config_fields(config_class) -> set:
    fields = {f.name for f in dataclasses.fields(config_class)} if dataclasses.is_dataclass(config_class) else set()
    return fields | set(getattr(config_class, "attribute_map", {}))


def model_class(model_type: str):
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type])


def tiny_config(model_type: str):
    """The model class's config with the SMALL settings it has (and its sub-configs' too), and its OVERRIDES."""
    from transformers import CONFIG_MAPPING

    # the causal LM's own config class (Emu3's causal LM takes the text config, not the model type's composite one)
    config_class = getattr(model_class(model_type), "config_class", None) or CONFIG_MAPPING[model_type]
    fields = config_fields(config_class)
    kwargs = {k: v for k, v in SMALL.items() if k in fields}
    if "kv_lora_rank" in fields:  # latent attention expands its cache to every head: no grouped KV heads
        kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads")
    for name, sub_class in (getattr(config_class, "sub_configs", None) or {}).items():
        sub_class = CONFIG_MAPPING[sub_class] if isinstance(sub_class, str) else sub_class
        if name in fields and sub_class is not None and hasattr(sub_class, "model_type"):
            kwargs[name] = {k: v for k, v in SMALL.items() if k in config_fields(sub_class)}
    for key, value in OVERRIDES.get(model_type, {}).items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        elif value is None:
            kwargs.pop(key, None)
        else:
            kwargs[key] = value
    return config_class(**kwargs)


def independent(model, seed: int, gain: float = 10.0):
    """The same architecture and config with other random weights, its body's matrices scaled by `gain`: its drafts
    are mostly rejected. (At the init scale a tiny model's output is dominated by its input embedding, so two of
    them tend to agree on repeating a token; scaled, the body decides.)"""
    import torch

    torch.manual_seed(seed)
    drafter = type(model)(model.config).eval()
    embeddings = {id(p) for module in (drafter.get_input_embeddings(), drafter.get_output_embeddings())
                  if module is not None for p in module.parameters()}  # fmt: skip
    with torch.no_grad():
        for p in drafter.parameters():
            if p.dim() >= 2 and p.is_floating_point() and id(p) not in embeddings:
                p.mul_(gain)
    return drafter


class ForwardCount:
    """Counts forward calls of the models it watches (a refusal must come before the first)."""

    def __init__(self, *models):
        self.calls = 0
        for model in models:
            model.register_forward_pre_hook(self.seen)

    def seen(self, module, args):
        self.calls += 1


def first_line(err: BaseException) -> str:
    """The error's type and the first line of its message that is not empty."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:300]


def run_one(model_type: str) -> dict:
    """One architecture, in this process: builds it, runs both greedy decodings, returns its row."""
    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import evospec_hf
    from evospec_hf import DraftStats
    from evospec_hf.bench.tiny import noisy_copy

    transformers.logging.set_verbosity_error()
    row = {"model_type": model_type, "model_class": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[model_type]}
    try:
        config = tiny_config(model_type)
        torch.manual_seed(0)
        target = model_class(model_type)(config).eval()
        # one drafter that agrees often (the target plus noise) and one that does not (other weights), so that
        # accepted drafts and rolled-back rejections are both exercised
        # (the second without drafts copied from the context, which a tiny model's repeated tokens would accept)
        drafters = {
            "noisy copy": (noisy_copy(target, seed=1), CONFIG),
            "independent": (independent(target, seed=2), dict(CONFIG, lookup_tokens=0)),
        }
    except Exception as err:  # noqa: BLE001 - any failure to build is recorded, not raised
        return {**row, "class": "skipped", "detail": f"does not build: {first_line(err)}"}
    row["parameters"] = sum(p.numel() for p in target.parameters())
    head_weight = getattr(target.get_output_embeddings(), "weight", None)  # some heads are a list (MusicGen's)
    vocab = head_weight.shape[0] if isinstance(head_weight, torch.Tensor) else 64
    high = max(4, min(vocab, VOCAB_SIZE))
    prompt = torch.randint(3, high, (1, PROMPT_LENGTH), generator=torch.Generator().manual_seed(0))
    inputs = dict(input_ids=prompt, attention_mask=torch.ones_like(prompt))
    # (num_return_sequences: MusicGen's own generate needs it given)
    greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0, num_return_sequences=1)
    try:
        with torch.no_grad():
            expected = target.generate(**inputs, **greedy)
    except Exception as err:  # noqa: BLE001
        return {**row, "class": "skipped", "detail": f"plain greedy fails: {first_line(err)}"}
    count, parts = ForwardCount(target, *(drafter for drafter, _ in drafters.values())), []
    row["drafted"], row["accepted"] = {}, {}
    for name, (drafter, options) in drafters.items():
        stats, before = DraftStats(), count.calls
        try:
            with torch.no_grad():
                got = target.generate(
                    **inputs, **greedy, assistant_model=drafter, evospec_config=evospec_hf.EvoSpecConfig(**options),
                    evospec_stats=stats,
                )  # fmt: skip
        except Exception as err:  # noqa: BLE001
            message = first_line(err)
            early = count.calls == before and isinstance(err, ValueError)
            named = model_type in str(err)
            if early and named:
                return {**row, "class": "refused", "detail": message}
            if not isinstance(err, ValueError):
                return {**row, "class": "error", "detail": f"{name}: {message}", "why": "raw error"}
            why = "raised after a forward pass" if not early else "does not name the architecture"
            return {**row, "class": "error", "detail": f"{name}: {message}", "why": why}
        row["drafted"][name], row["accepted"][name] = stats.drafted, stats.accepted
        if not torch.equal(got, expected):
            detail = f"{name}: plain {expected[0].tolist()} evospec {got[0].tolist()}"
            return {**row, "class": "different", "detail": detail}
        parts.append(f"{stats.accepted} of {stats.drafted} drafts accepted ({name})")
    if sum(row["drafted"].values()) == sum(row["accepted"].values()):
        parts.append("no draft rejected")
    return {**row, "class": "exact", "detail": ", ".join(parts)}


# the evospec_hf options of the run: the drafter drafts 4 tokens every round (the "heuristic" rule, independent
# of timings), and every verification goes through the target's int8 screen, so its exactness is checked too
CONFIG = dict(draft_schedule="heuristic", num_draft_tokens=4, screen_head="on")


def run_isolated(model_type: str, timeout: float) -> dict:
    """`run_one` in a subprocess with a time limit; its row is the last line it prints."""
    start = time.perf_counter()
    command = [sys.executable, __file__, "--one", model_type]
    env = dict(os.environ, EVOSPEC_HF_CALIBRATION="0", TOKENIZERS_PARALLELISM="false")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        row = {"model_type": model_type, "class": "error", "detail": f"timed out after {timeout:.0f} s"}
    else:
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if done.returncode == 0 and lines:
            row = json.loads(lines[-1])
        else:
            tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            row = {"model_type": model_type, "class": "error", "detail": f"process exited {done.returncode}: {tail}"}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def markdown(rows: list, header: dict) -> str:
    counts = {name: sum(r["class"] == name for r in rows) for name in CLASSES}
    lines = [
        "# The causal-LM zoo: evospec_hf greedy against plain greedy on every architecture",
        "",
        f"`{header['command']}`",
        "",
        f"{header['date']}, {header['machine']}, Python {header['python']}, transformers {header['transformers']}, "
        f"torch {header['torch']}; wall time {header['wall_seconds'] / 60:.1f} min.",
        "",
        f"{len(rows)} model types of `MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`, each built tiny from its config (hidden 64, "
        f"2 layers, vocabulary {VOCAB_SIZE}; `benchmarks/zoo.py`), {NEW_TOKENS} new tokens after a "
        f"{PROMPT_LENGTH}-token prompt, two drafters (the target plus small noise; other weights), evospec_hf options "
        f"`{CONFIG}`.",
        "",
        "| class | count |",
        "|---|---:|",
        *[f"| {name} | {counts[name]} |" for name in CLASSES],
        "",
        "| model_type | class | detail |",
        "|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (CLASSES.index(r["class"]), r["model_type"])):
        detail = row.get("detail", "").replace("|", "\\|")
        lines.append(f"| {row['model_type']} | {row['class']} | {detail} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/zoo")
    parser.add_argument("--only", nargs="*", help="these model types only (the results are then not written)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per architecture")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one model type, its row on stdout
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one)))
        return

    import torch
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_types = args.only or list(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    start, rows = time.perf_counter(), []
    for model_type in model_types:
        row = run_isolated(model_type, args.timeout)
        rows.append(row)
        print(f"{model_type:28s} {row['class']:9s} {row['seconds']:6.1f}s  {row.get('detail', '')[:150]}", flush=True)
    header = {
        "command": "nice -n 10 python benchmarks/zoo.py" + ("" if args.out == "results/zoo" else f" --out {args.out}"),
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()}-core CPU (shared)",
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "wall_seconds": round(time.perf_counter() - start, 1),
    }
    counts = {name: sum(r["class"] == name for r in rows) for name in CLASSES}
    print(json.dumps(counts))
    if args.only:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**header, "counts": counts, "rows": rows}, indent=1) + "\n")
    (out / "results.md").write_text(markdown(rows, header))
    print(f"wrote {out / 'results.md'}")


if __name__ == "__main__":
    main()
