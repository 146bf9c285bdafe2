"""Brings drafter checkpoint folders' Hub files up to date with this evospec_hf (text files only; weights untouched).

    evospec-hf write-hub-files checkpoints/*-drafter-l2 checkpoints/*-feature-l1
    evospec-hf write-hub-files --checkpoint-id "$PWD/my-drafter" my-drafter

Writes `custom_generate/generate.py` (from the template `evospec_hf/models/hub_generate.py`),
`custom_generate/requirements.txt` and the model card's front matter (`custom_generate` tag, `base_model`): see
`evospec_hf.models.checkpoint.hub_files`. The default `--checkpoint-id ""` suits folders committed to a repository
(their generate.py then asks for `assistant_model=`); `EvoSpecDrafter.push_to_hub` writes the repo id itself.
"""

from __future__ import annotations

import argparse

from evospec_hf.models.checkpoint import write_hub_files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="evospec-hf write-hub-files", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folders", nargs="+", help="evospec_hf drafter checkpoint folders")
    parser.add_argument("--checkpoint-id", default="", help="what generate.py loads: a folder path or Hub repo id")
    args = parser.parse_args(argv)
    for folder in args.folders:
        changed = write_hub_files(folder, checkpoint_id=args.checkpoint_id)
        print(f"{folder}: " + (", ".join(str(p.relative_to(folder)) for p in changed) or "up to date"))


if __name__ == "__main__":
    main()
