"""HiSpec's exit head: reads the target after its first `layer` decoder layers and predicts its next token.

The intermediate verifier (`evospec_hf.generation.hispec`) runs the target's own first layers, unchanged (their
outputs are the target's, so its KV entries equal the target's for those layers), then the model's final norm, this
head's projection, and the target's LM head over a shortlist. Only the projection is trained
(`evospec-hf train-exit-head`, KD on the target's top-k next-token distribution); it starts as the identity, which
is the plain early exit (LayerSkip's, without training the layers).

A head folder holds `evospec_exit.json` (`{"format", "version", "target", "layer", "hidden_size",
"target_architecture"}`) and `evospec_exit.safetensors` (the projection).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..utils import check_format, is_int
from .drafter import target_architecture

EXIT_CONFIG = "evospec_exit.json"
EXIT_WEIGHTS = "evospec_exit.safetensors"
FORMAT_NAME = "evospec-exit-head"
FORMAT_VERSION = 1


class ExitHead(nn.Module):
    """`(..., hidden_size)` normed hidden states after the target's first `layer` layers -> the LM head's input.

    Args:
        hidden_size: the target's hidden size.
        layer: how many of the target's decoder layers run before the exit (1 .. num_hidden_layers - 1).
    """

    def __init__(self, hidden_size: int, layer: int):
        super().__init__()
        self.layer = layer
        self.proj = nn.Linear(hidden_size, hidden_size, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(hidden_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden)

    def save_pretrained(self, folder: str | os.PathLike, target, target_name: str, report: dict | None = None) -> None:
        """Writes the head and its config (with the target's architecture, checked when loading)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "target": target_name, "layer": self.layer,
            "hidden_size": self.proj.weight.shape[0], "target_architecture": target_architecture(target),
            **({"report": report} if report else {}),
        }  # fmt: skip
        save_file({"proj.weight": self.proj.weight.detach().float().cpu().contiguous()}, str(folder / EXIT_WEIGHTS))
        (folder / EXIT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, target) -> "ExitHead":
        """Loads a head made for `target` (refused, with the reason, if it was made for another architecture)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        path = folder / EXIT_CONFIG
        if not path.is_file():
            raise FileNotFoundError(f"no {EXIT_CONFIG} in {str(folder)!r}: make one with evospec-hf train-exit-head")
        config = json.loads(path.read_text())
        check_format(config, FORMAT_NAME, FORMAT_VERSION, "an evospec_hf exit head", path)
        expected = target_architecture(target)
        if config.get("target_architecture") != expected:
            raise ValueError(
                f"the exit head in {str(folder)!r} was made for {config.get('target_architecture')}, but the target "
                f"is {expected}"
            )
        layer, total = config["layer"], expected["num_hidden_layers"]
        if not (is_int(layer) and 1 <= layer < total):
            raise ValueError(f"{path}: layer must be in [1, {total - 1}], got {layer!r}")
        head = cls(config["hidden_size"], layer)
        head.load_state_dict(load_file(str(folder / EXIT_WEIGHTS)))
        weight = target.get_output_embeddings().weight
        return head.to(device=weight.device, dtype=weight.dtype).eval()
