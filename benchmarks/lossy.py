"""What AdaSD's LOSSY acceptance (`EvoSpecConfig.lossy_acceptance="adasd-js"`) costs in quality, next to the speed
it buys: one table and one plot of quality against speed, per `lossy_js_scale`.

    python benchmarks/lossy.py --checkpoint checkpoints/gemma-3-270m-feature-l1 --scales 0.5,1,2,4 \
        --out results/lossy/gemma-3-270m

Every configuration generates greedily on the same prompts:

- `target`: plain greedy `generate` (the reference);
- `exact`: evospec_hf with the checkpoint's drafter, the evospec shortlist and the entropy stop (lossless: its
  output is checked equal to the reference);
- `lossy-<s>`: the same with `lossy_acceptance="adasd-js"` and `lossy_js_scale=s`.

Quality, on tasks whose answers can be checked (made here from a seed, none seen in training):

- `arithmetic`: few-shot sums and products of two numbers; exact match of the first number generated;
- `extraction`: a short record (name, city, phone, order number) and a question about one field; the answer must
  contain the field's value;
- `code`: small Python functions from a signature and docstring, run against a few asserts in a subprocess
  (a time limit each); pass rate;
- `prose`: held-out chat, summary, translation and general prompts (`evospec_hf.bench.prompts`); ROUGE-L and chrF
  of the output against plain greedy output, through local `evaluate` modules (`evospec_hf/bench/metrics`).

Speed: new tokens per second over all generations, and tau. Writes `results.json`, `results.md` and
`quality_vs_speed.png` into `--out`.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import evospec_hf
from evospec_hf import DraftStats, EvoSpecConfig, EvoSpecDrafter
from evospec_hf.bench.metrics import load_metric
from evospec_hf.bench.prompts import builtin_prompts

CODE_TASKS = [  # (prompt, asserts)
    ('def add(a, b):\n    """Return the sum of a and b."""\n', ["add(2, 3) == 5", "add(-1, 1) == 0"]),
    ('def square(x):\n    """Return x squared."""\n', ["square(4) == 16", "square(-3) == 9"]),
    ('def is_even(n):\n    """Return True if n is even."""\n', ["is_even(4)", "not is_even(7)"]),
    ('def reverse(s):\n    """Return the string s reversed."""\n', ["reverse('abc') == 'cba'", "reverse('') == ''"]),
    ('def maximum(xs):\n    """Return the largest number in the list xs."""\n', ["maximum([1, 5, 2]) == 5"]),
    ('def factorial(n):\n    """Return n factorial."""\n', ["factorial(5) == 120", "factorial(0) == 1"]),
    ('def count_vowels(s):\n    """Return the number of vowels in s."""\n', ["count_vowels('banana') == 3"]),
    ('def average(xs):\n    """Return the mean of the list xs."""\n', ["average([1, 2, 3]) == 2"]),
    ('def first_word(s):\n    """Return the first word of the sentence s."""\n',
     ["first_word('hello world') == 'hello'"]),
    ('def celsius_to_fahrenheit(c):\n    """Convert a temperature from Celsius to Fahrenheit."""\n',
     ["celsius_to_fahrenheit(100) == 212", "celsius_to_fahrenheit(0) == 32"]),
    ('def is_palindrome(s):\n    """Return True if s reads the same backwards."""\n',
     ["is_palindrome('level')", "not is_palindrome('abc')"]),
    ('def sum_list(xs):\n    """Return the sum of the numbers in xs."""\n', ["sum_list([1, 2, 3]) == 6"]),
]  # fmt: skip
CITIES = ("Lisbon", "Nairobi", "Osaka", "Lima", "Oslo", "Tunis", "Hanoi", "Quito", "Perth", "Riga")
NAMES = ("Ana Silva", "Ben Okafor", "Chen Wei", "Dara Novak", "Elif Kaya", "Farid Haddad", "Grace Mensah",
         "Hiro Sato", "Ines Costa", "Jonas Berg")  # fmt: skip


def arithmetic_tasks(count: int, seed: int) -> list[dict]:
    rng = random.Random(f"arithmetic:{seed}")

    def item():
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+*")
        return f"{a} {op} {b}", str(a + b if op == "+" else a * b)

    tasks = []
    for _ in range(count):
        shots = "".join(f"Q: {q} = ?\nA: {a}\n\n" for q, a in (item() for _ in range(4)))
        question, answer = item()
        tasks.append({"prompt": f"{shots}Q: {question} = ?\nA:", "answer": answer})
    return tasks


def extraction_tasks(count: int, seed: int) -> list[dict]:
    rng = random.Random(f"extraction:{seed}")
    tasks = []
    for _ in range(count):
        record = {
            "name": rng.choice(NAMES), "city": rng.choice(CITIES),
            "phone": f"555-{rng.randint(1000, 9999)}", "order number": str(rng.randint(100000, 999999)),
        }  # fmt: skip
        field = rng.choice(["city", "phone", "order number"])
        lines = "\n".join(f"{k.capitalize()}: {v}" for k, v in record.items())
        first = record["name"].split()[0]
        prompt = f"Customer record\n{lines}\n\nQuestion: What is {first}'s {field}?\nAnswer:"
        tasks.append({"prompt": prompt, "answer": record[field]})
    return tasks


def passes(code: str, asserts: list[str], seconds: float = 5.0) -> bool:
    """Whether `code` defines a function that passes `asserts`, run in a fresh interpreter with a time limit."""
    program = code + "\n" + "\n".join(f"assert {a}" for a in asserts) + "\n"
    try:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def function_body(prompt: str, completion: str) -> str:
    """The prompt and the completion's indented lines (up to the first line back at the margin)."""
    kept = []
    for line in completion.split("\n"):
        if line.strip() and not line.startswith((" ", "\t")):
            break
        kept.append(line)
    return prompt + "\n".join(kept)


def configurations(scales: list[float]) -> dict:
    base = dict(shortlist="evospec", entropy_stop=True, lookup_tokens=0)
    configs = {"target": None, "exact": EvoSpecConfig(**base)}
    for scale in scales:
        configs[f"lossy-{scale:g}"] = EvoSpecConfig(**base, lossy_acceptance="adasd-js", lossy_js_scale=scale)
    return configs


def run(model, tokenizer, drafter, config, items: list[dict]) -> tuple[list[list[int]], dict]:
    """Greedy generations for `items` (`{"input_ids", "max_new_tokens"}`) under `config` (None: plain greedy)."""
    outputs, stats, seconds, new_tokens = [], DraftStats(), 0.0, 0
    for item in items:
        kwargs = {}
        if config is not None:
            kwargs = {"assistant_model": drafter, "evospec_config": config, "evospec_stats": stats}
        input_ids = item["input_ids"]
        start = time.perf_counter()
        out = model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=item["max_new_tokens"],
            do_sample=False, **kwargs,
        )  # fmt: skip
        seconds += time.perf_counter() - start
        new = out[0, input_ids.shape[1] :].tolist()
        new_tokens += len(new)
        outputs.append(new)
    figures = {"tokens_per_s": new_tokens / seconds, "seconds": seconds, "new_tokens": new_tokens}
    if config is not None:
        figures.update(tau=stats.mean_accepted_length, lossy_accepted=stats.lossy_accepted, drafted=stats.drafted,
                       accepted=stats.accepted, entropy_stops=stats.entropy_stops)  # fmt: skip
    return outputs, figures


def score(tasks: dict, texts: dict, reference_texts: dict, metrics: dict) -> dict:
    """Quality of one configuration's texts (per task) against the answers, and prose against plain greedy."""
    first_number = re.compile(r"-?\d+")
    result = {}
    found = [first_number.search(t) for t in texts["arithmetic"]]
    result["arithmetic"] = sum(bool(f) and f.group() == task["answer"] for f, task in zip(found, tasks["arithmetic"]))
    result["arithmetic"] /= len(tasks["arithmetic"])
    hits = [task["answer"] in t.split("\n")[0] for t, task in zip(texts["extraction"], tasks["extraction"])]
    result["extraction"] = sum(hits) / len(hits)
    runs = [passes(function_body(task["prompt"], t), task["asserts"]) for t, task in zip(texts["code"], tasks["code"])]
    result["code"] = sum(runs) / len(runs)
    prose = {"predictions": texts["prose"], "references": reference_texts["prose"]}
    result["prose_rougeL"] = metrics["rouge"].compute(**prose)["rougeL"]
    result["prose_chrf"] = metrics["chrf"].compute(**prose)["score"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="checkpoints/gemma-3-270m-feature-l1")
    parser.add_argument("--scales", default="0.5,1,2,4", help="lossy_js_scale values, comma-separated")
    parser.add_argument("--arithmetic", type=int, default=20)
    parser.add_argument("--extraction", type=int, default=20)
    parser.add_argument("--prose-per-set", type=int, default=2)
    parser.add_argument("--prose-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    scales = [float(s) for s in args.scales.split(",")]

    model, tokenizer = evospec_hf.load_target(EvoSpecDrafter.read_config(args.checkpoint)["target"])
    drafter = EvoSpecDrafter.from_pretrained(args.checkpoint, target=model)
    metrics = {name: load_metric(name) for name in ("rouge", "chrf")}

    tasks = {
        "arithmetic": arithmetic_tasks(args.arithmetic, args.seed),
        "extraction": extraction_tasks(args.extraction, args.seed),
        "code": [{"prompt": p, "asserts": a} for p, a in CODE_TASKS],
    }
    limits = {"arithmetic": 8, "extraction": 12, "code": 64}
    items, owners = [], []
    for name, group in tasks.items():
        for task in group:
            ids = tokenizer(task["prompt"], return_tensors="pt").input_ids
            items.append({"input_ids": ids, "max_new_tokens": limits[name]})
            owners.append(name)
    prose = builtin_prompts(tokenizer, ["chat", "summary", "translation", "general"], per_set=args.prose_per_set)
    for prompt in prose:
        items.append({"input_ids": prompt["input_ids"], "max_new_tokens": args.prose_tokens})
        owners.append("prose")
    tasks["prose"] = prose

    # one untimed warm-up per configuration (first-call setup: shortlist tables, indexes)
    configs = configurations(scales)
    for config in configs.values():
        run(model, tokenizer, drafter, config, items[:1])
    results, reference = {}, None
    for name, config in tqdm(configs.items(), desc="configurations"):
        outputs, figures = run(model, tokenizer, drafter, config, items)
        texts = {kind: [] for kind in tasks}
        for owner, ids in zip(owners, outputs):
            texts[owner].append(tokenizer.decode(ids, skip_special_tokens=True))
        if reference is None:
            reference = {"texts": texts, "outputs": outputs, "figures": figures}
        if name == "exact" and outputs != reference["outputs"]:
            raise SystemExit("the lossless configuration's output differs from plain greedy: a bug, not a trade-off")
        same = sum(a == b for out, ref in zip(outputs, reference["outputs"]) for a, b in zip(out, ref))
        figures["greedy_match"] = same / max(1, sum(len(r) for r in reference["outputs"]))
        figures["speedup"] = figures["tokens_per_s"] / reference["figures"]["tokens_per_s"]
        figures["quality"] = score(tasks, texts, reference["texts"], metrics)
        results[name] = figures
        print(name, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in figures.items()
                                if k != "quality"}), json.dumps(figures["quality"]))  # fmt: skip
    for figures in results.values():
        figures["vs_exact"] = figures["tokens_per_s"] / results["exact"]["tokens_per_s"]
    write(Path(args.out), results, args, len(items))


def write(out: Path, results: dict, args, generations: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
    lines = [
        f"`{' '.join(sys.argv)}`: {generations} greedy generations per configuration, this machine.",
        "",
        "| configuration | tok/s | vs target | vs exact | tau | lossy accepts | tokens as greedy | arithmetic "
        "| extraction | code | prose ROUGE-L vs greedy | prose chrF vs greedy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in results.items():
        q = f["quality"]
        lines.append(
            f"| {name} | {f['tokens_per_s']:.2f} | {f['speedup']:.2f}x | {f['vs_exact']:.2f}x | "
            f"{f.get('tau', 1.0):.2f} | {f.get('lossy_accepted', 0)} | {f['greedy_match']:.1%} | "
            f"{q['arithmetic']:.0%} | {q['extraction']:.0%} | {q['code']:.0%} | {q['prose_rougeL']:.3f} | "
            f"{q['prose_chrf']:.1f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out / "quality_vs_speed.png")


def plot(results: dict, path: Path) -> None:
    """Each quality measure against speed (vs exact speculative decoding), the configurations in order of speed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    names = sorted((n for n in results if n != "target"), key=lambda n: results[n]["vs_exact"])
    speed = [results[n]["vs_exact"] for n in names]
    for key, label in (("arithmetic", "arithmetic exact match"), ("extraction", "extraction"), ("code", "code tests"),
                       ("prose_rougeL", "prose ROUGE-L vs greedy")):  # fmt: skip
        ax.plot(speed, [results[n]["quality"][key] for n in names], marker="o", label=label)
    for n, x in zip(names, speed):
        ax.annotate(n, (x, 0.02), fontsize=7, rotation=90)
    ax.set_xlabel("speed vs exact speculative decoding (same drafter)")
    ax.set_ylabel("quality")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("AdaSD lossy acceptance: quality against speed")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
