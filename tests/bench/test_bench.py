"""The benchmark harness on tiny models: prompts, methods, measurements, the exactness check and the report."""

import json

import pytest
import torch

from evospec_hf import EvoSpecConfig
from evospec_hf.bench import (
    BUILTIN_SETS,
    Method,
    MismatchError,
    build_methods,
    builtin_prompts,
    load_prompts,
    run_benchmark,
    write_report,
)
from tests.conftest import VOCAB_SIZE, noisy_copy, tiny_gemma3, tiny_llama


class CharTokenizer:
    """Characters to ids, enough for the prompt loaders (no real tokenizer is downloaded in tests)."""

    bos_token_id = 1

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        ids = ([self.bos_token_id] if add_special_tokens else []) + [3 + ord(c) % (VOCAB_SIZE - 3) for c in text]
        return type("Encoding", (), {"input_ids": torch.tensor([ids])})()


def prompt(pid, domain, ids):
    return {"id": pid, "domain": domain, "input_ids": torch.tensor([ids])}


def test_jsonl_in_both_forms(tmp_path):
    ours, spec = tmp_path / "ours.jsonl", tmp_path / "spec.jsonl"
    ours.write_text(json.dumps({"id": "a", "domain": "code", "prompt": "def f():"}) + "\n\n")
    spec.write_text(json.dumps({"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Shorter."]}))
    (a,) = load_prompts(ours, CharTokenizer())
    (b,) = load_prompts(spec, CharTokenizer())
    assert (a["id"], a["domain"], a["input_ids"].shape) == ("a", "code", (1, 9))
    assert (b["id"], b["domain"]) == ("81", "writing")
    assert b["input_ids"].shape[1] == 1 + len("Write a poem.")  # the first turn only

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "no prompt field"}))
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_prompts(bad, CharTokenizer())


def test_builtin_sets_come_from_held_out_text():
    prompts = builtin_prompts(CharTokenizer(), BUILTIN_SETS, per_set=1, prompt_tokens=40)
    assert [p["domain"] for p in prompts] == list(BUILTIN_SETS)
    assert all(p["input_ids"].shape == (1, 40) for p in prompts)
    switch = next(p for p in prompts if p["domain"] == "topic-switch")["input_ids"][0]
    law = next(p for p in prompts if p["domain"] == "law")["input_ids"][0]
    assert torch.equal(switch[:24], law[:24])  # law context, then the start of a code file
    with pytest.raises(ValueError, match="unknown built-in"):
        builtin_prompts(CharTokenizer(), ["poetry"])


def test_method_names():
    drafter = tiny_llama(seed=1)
    methods = build_methods(["target", "fr-spec", "router-8k", "evospec-32k", "evospec+lookup"], drafter, lookup_tokens=7)
    assert [m.name for m in methods] == ["target", "fr-spec-16k", "router-8k", "evospec-32k", "evospec-16k+lookup"]
    assert methods[3].generate_kwargs()["evospec_config"].lookup_tokens == 0
    assert methods[4].generate_kwargs()["evospec_config"].lookup_tokens == 7
    with pytest.raises(ValueError, match="evospec_hf's methods only"):
        build_methods(["prompt-lookup+lookup"], drafter)
    with pytest.raises(ValueError, match="unknown method"):
        build_methods(["medusa"], drafter)
    with pytest.raises(ValueError, match="twice"):
        build_methods(["fr-spec", "fr-spec-16k"], drafter)
    with pytest.raises(ValueError, match="needs a drafter"):
        build_methods(["hf-assisted"])
    with pytest.raises(FileNotFoundError, match="build-vocabtrim-shortlist"):
        build_methods(["vocabtrim"], drafter)
    with pytest.raises(ValueError, match="adapting_drafter"):
        build_methods(["evospec-online"], drafter)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_every_method_matches_greedy_and_is_measured(make, static_table_path):
    target = make(seed=0)
    target.generation_config.eos_token_id = None  # every generation runs its full length
    drafter = noisy_copy(target, seed=5)
    static = EvoSpecConfig(shortlist="static+context", shortlist_size=48, context_slots=16,
                           static_shortlist_path=static_table_path)  # fmt: skip
    methods = build_methods(["target", "hf-assisted", "prompt-lookup", "full-vocab", "full-vocab+lookup"], drafter) + [
        Method("static", lambda: {"assistant_model": drafter, "evospec_config": static}, drafts=True)
    ]
    prompts = [prompt("p0", "code", [1, 5, 9, 5, 9, 5]), prompt("p1", "law", [1, 7, 3, 12])]
    results = run_benchmark(target, prompts, methods, max_new_tokens=12, repeats=2, progress=False)

    first = results["prompts"][0]["methods"]
    plain = first["target"]
    assert plain["tau"] == 1.0 and plain["forwards"] == plain["new_tokens"] == 12 and plain["speedup"] == 1.0
    assert len(plain["seconds_all"]) == 2
    for name in ("hf-assisted", "full-vocab", "static"):
        assert first[name]["forwards"] < 12, name  # the noisy copy's drafts are mostly accepted
    assert first["full-vocab"]["shortlist_recall"] == 1.0
    assert 0.0 <= first["static"]["shortlist_recall"] <= 1.0
    assert first["static"]["head_steps"] > 0 and first["static"]["head_ms_per_step"] > 0
    assert 0 < first["static"]["draft_share"] < 1 and 0 < first["static"]["verify_share"] < 1
    assert "shortlist_recall" not in first["hf-assisted"]  # transformers' own generator reports no DraftStats
    assert first["full-vocab"]["lookup_rounds"] == 0 and first["full-vocab+lookup"]["lookup_rounds"] > 0  # p0 repeats
    aggregate = results["aggregate"]
    assert set(aggregate["static"]["by_domain"]) == {"code", "law"}
    assert aggregate["target"]["all"]["speedup"] == 1.0


def test_a_lossy_output_fails_loudly_and_names_the_prompt():
    target = tiny_llama(seed=0)
    target.generation_config.eos_token_id = None
    prompts = [prompt("repeats", "code", [1, 5, 5, 5, 5, 5])]
    greedy = target.generate(prompts[0]["input_ids"], max_new_tokens=10, do_sample=False)
    second = int(greedy[0, 7])  # forbidding greedy's second new token changes the output from there on
    lossy = Method("penalised", lambda: {"suppress_tokens": [second]})
    with pytest.raises(MismatchError, match="'penalised' on prompt 'repeats' differs from plain greedy at position 7"):
        run_benchmark(target, prompts, build_methods(["target"]) + [lossy], max_new_tokens=10, progress=False)
    lossy.lossless = False  # declared lossy: measured, not checked
    run_benchmark(target, prompts, build_methods(["target"]) + [lossy], max_new_tokens=10, progress=False)


def test_report_files(tmp_path):
    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=5)
    methods = build_methods(["target", "full-vocab"], drafter)
    prompts = [prompt("p0", "code", [1, 5, 9]), prompt("p1", "topic-switch", [1, 7, 3])]
    results = run_benchmark(target, prompts, methods, max_new_tokens=8, progress=False)
    meta = {"target": "tiny", "drafter": "noisy", "prompts": 2, "max_new_tokens": 8, "repeats": 1, "machine": "test"}
    paths = write_report(results, tmp_path, meta)
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    text = (tmp_path / "results.md").read_text()
    assert "| full-vocab |" in text and "topic-switch" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["meta"]["target"] == "tiny" and len(saved["prompts"]) == 2


def test_vs_full_compares_each_method_with_its_own_drafters_full_vocabulary():
    from evospec_hf.bench.report import markdown

    def row(tau, head):
        cells = {"speedup": 1.0, "tokens_per_s": 1.0, "tau": tau, "shortlist_recall": 1.0, "head_ms_per_step": head}
        return {"all": cells, "by_domain": {"code": cells}}

    aggregate = {
        "full-vocab": row(1.0, 40.0), "evospec-16k": row(1.1, 4.0),
        "feature:full-vocab": row(2.0, 40.0), "feature:evospec-16k": row(2.2, 2.0),
        "feature:full-vocab+lookup": row(4.0, 40.0), "feature:evospec-16k+lookup": row(3.0, 8.0),
    }  # fmt: skip
    results = {"aggregate": aggregate, "prompts": [{"domain": "code"}]}
    lines = {line.split("|")[1].strip(): line for line in markdown(results, {}).splitlines() if line.startswith("| ")}
    assert "| 110.0% |" in lines["evospec-16k"] and "| 10.0% |" in lines["evospec-16k"]
    assert "| 110.0% |" in lines["feature:evospec-16k"] and "| 5.0% |" in lines["feature:evospec-16k"]
    assert "| 75.0% |" in lines["feature:evospec-16k+lookup"] and "| 20.0% |" in lines["feature:evospec-16k+lookup"]


def test_batched_mode_checks_every_row_and_reports_each_batch_size(tmp_path):
    from evospec_hf.bench.batched import markdown, plot_batch_sizes, run_batched

    target = tiny_llama(seed=0)
    drafter = noisy_copy(target, seed=5)
    methods = build_methods(["target", "target+screen", "full-vocab+lookup", "full-vocab+align-min"], drafter)
    prompts = [prompt(f"p{i}", "code", [1, *range(5 + i, 9 + 2 * i)]) for i in range(4)]  # 5 to 8 tokens
    results = run_batched(target, prompts, methods, [2, 4], max_new_tokens=10, progress=False)
    assert results["batch_sizes"] == [1, 2, 4]  # batch 1 added: the prompts alone
    for name, by_size in results["methods"].items():
        assert by_size[1]["rows_differing_from_alone"] is None
        for size in (2, 4):
            assert by_size[size]["tokens_per_s"] > 0 and by_size[size]["rows_differing_from_alone"] == 0, name
    assert results["methods"]["target"][4]["speedup"] == 1.0 and results["methods"]["target"][4]["tau"] is None
    assert results["methods"]["full-vocab+lookup"][4]["tau"] > 1.0
    assert results["methods"]["full-vocab+lookup"][4]["tau_alone"] == results["methods"]["full-vocab+lookup"][1]["tau"]
    text = markdown(results, {"command": "x", "target": "tiny", "prompts": 4, "prompt_source": "test",
                              "max_new_tokens": 10, "machine": "cpu"})  # fmt: skip
    assert "| full-vocab+lookup |" in text and "batch 4" in text
    plot_batch_sizes(results, tmp_path / "batch_sizes.png")
    assert (tmp_path / "batch_sizes.png").stat().st_size > 0


def test_batched_mode_names_the_row_that_differs():
    from evospec_hf.bench.batched import run_batched

    target = tiny_llama(seed=0)
    target.generation_config.eos_token_id = None
    prompts = [prompt("a", "code", [1, 5, 6]), prompt("b", "law", [1, 7, 3, 12, 9])]
    lossy = Method("penalised", lambda: {"repetition_penalty": 5.0})
    with pytest.raises(MismatchError, match=r"'penalised' at batch size 1, row 0 \(prompt 'a'\)"):  # alone first
        run_batched(target, prompts, build_methods(["target"]) + [lossy], [2], max_new_tokens=10, progress=False)
