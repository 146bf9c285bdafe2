"""The `evospec-hf` command line: the tools that make and ship what `generate` uses.

    evospec-hf --help
    evospec-hf distill --help

Each command is a module of this package with a `main(argv)`; `python -m evospec_hf.commands.<module>` runs one too
(what `accelerate launch -m` needs). Modules are imported only when their command runs, so `--help` is quick.
"""

from __future__ import annotations

import argparse
import importlib

# command -> (module, what it does)
COMMANDS = {
    "distill": ("distill", "distil a token or feature drafter from its target (LoRA, resumable, accelerate)"),
    "continuations": ("continuations", "write a target's own greedy continuations of mixture prompts (training data)"),
    "train-router": ("train_router", "train the cluster router of a drafter checkpoint (shortlist='router'/'evospec')"),
    "train-exit-head": ("train_exit_head", "train HiSpec's exit head for a target (intermediate verification)"),
    "build-static-shortlist": ("build_static_shortlist", "build the token frequency table of shortlist='static'"),
    "build-vocabtrim-shortlist": ("build_vocabtrim_shortlist", "build the tokens a drafter itself emits (VocabTrim)"),
    "build-semantic-index": ("build_semantic_index", "build the semantic index of shortlist='evospec' into a checkpoint"),
    "export-token-map": ("export_token_map", "export a drafter's hot vocabulary as SGLang's --speculative-token-map"),
    "write-hub-files": ("write_hub_files", "bring checkpoint folders' Hub files (custom_generate, card) up to date"),
    "write-docs-reference": ("write_docs_reference", "regenerate docs/reference from the config classes and commands"),
    "build-space": ("build_space", "write a Hugging Face Space folder with the demo, its source and the drafters"),
    "bench": ("..bench.__main__", "benchmark decoding methods side by side (same as python -m evospec_hf.bench)"),
}

EXAMPLE = """example:
  evospec-hf distill --kind feature --target gemma-3-270m --out runs/gemma-feature --steps 1800
  evospec-hf bench --drafter checkpoints/gemma-3-270m-drafter-l2 \
      --feature-drafter checkpoints/gemma-3-270m-feature-l1 --out results/bench/x

Run `evospec-hf <command> --help` for a command's options and examples."""


def main(argv: list[str] | None = None) -> int | None:
    parser = argparse.ArgumentParser(
        prog="evospec-hf", description=__doc__.split("\n\n")[0], epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module_name, _ = COMMANDS[args.command]
    module = importlib.import_module(module_name, package=__name__) if module_name.startswith(".") else (
        importlib.import_module(f"{__name__}.{module_name}")
    )  # fmt: skip
    return module.main(rest)
