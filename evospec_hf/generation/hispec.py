"""HiSpec's hierarchical verification: an intermediate verifier trims a round's drafts before the full target runs.

The intermediate verifier is the target's own first `layer` decoder layers (the same modules, not copies), the final
norm, an `ExitHead` (`evospec_hf.models.exit_head`) and the target's LM head over a shortlist (the static frequency
list's tokens plus the drafts themselves). It reads the round's drafts in one forward pass with its own KV cache,
and where its prediction differs from a draft the round is cut:

- greedy: before that draft (the target would most likely reject it; whatever the cut, the target verifies what is
  kept, so the output is plain greedy's);
- sampling: after that draft. Whether a draft is verified may depend on the drafts before it but not on the draft
  itself, or speculative sampling would no longer return the target's distribution (the residual it samples from
  assumes every draft was offered); so the first disagreement is still offered and only the drafts after it go.

The verifier's layers are the target's, so its KV entries for those layers equal the target's own. transformers'
assisted loop runs the target's forward whole, so that work is not reused here (docs/guides/adasd-hispec.md says what it
would save). The verifier costs `layer` layers and a shortlist head per draft position; it pays when the drafts it
removes would have cost the target more than that (the bench's `+hispec` methods report both: the
verifier's share of the wall time and the drafts it removed).
"""

from __future__ import annotations

import threading
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache

from ..models.drafter import drafter_from_target
from ..ops.softcap import logit_transform, softcap
from ..utils import decoder_body
from .rounds import Draft


def decoder_layers(model) -> nn.ModuleList:
    """The model's list of decoder layers (`model.layers`, `transformer.h`, ...): the ModuleList as long as
    `num_hidden_layers`."""
    total = model.config.get_text_config().num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == total:
            return module
    raise ValueError(f"cannot find the {total} decoder layers of {type(model).__name__}")


def shallow_target(target, layers: int):
    """A causal LM running the target's first `layers` decoder layers (shared modules), its final norm and LM head."""
    shallow = drafter_from_target(target, layers)
    mine, theirs = decoder_layers(shallow), decoder_layers(target)
    for i in range(layers):
        mine[i] = theirs[i]  # the target's own modules: no copy, and the same outputs as inside the target
    return shallow.eval()


class VerifierParts:
    """What every call's intermediate verifier shares for one target and exit head: the shallow body, the exit head
    and the packed shortlist rows (read-only, so calls on several threads share them)."""

    def __init__(self, target, exit_head, shortlist: torch.Tensor):
        self.body = decoder_body(shallow_target(target, exit_head.layer))
        self.exit_head = exit_head
        head = target.get_output_embeddings()
        self.weight = head.weight.detach()
        self.ids = shortlist.to(self.weight.device)
        self.rows = self.weight[self.ids].contiguous()  # packed once: no gathers over the vocabulary per round
        self.bias = None if getattr(head, "bias", None) is None else head.bias.detach()
        self.row_bias = None if self.bias is None else self.bias[self.ids].contiguous()
        self.softcap = logit_transform(target)


_PARTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # target -> {(folder, ids key): VerifierParts}
_PARTS_LOCK = threading.Lock()


def verifier_parts(target, folder: str, shortlist: torch.Tensor) -> VerifierParts:
    """The target's `VerifierParts` for the exit head in `folder` and this shortlist, built once and kept with the
    target (weakly: they go when the target goes)."""
    from ..models.exit_head import ExitHead

    key = (str(folder), hash(shortlist.cpu().numpy().tobytes()))
    with _PARTS_LOCK:
        parts = _PARTS.setdefault(target, {})
        if key not in parts:
            parts[key] = VerifierParts(target, ExitHead.from_pretrained(folder, target), shortlist)
        return parts[key]


class IntermediateVerifier:
    """Trims drafts the target's early layers disagree with (see the module docstring). One per `generate` call.

    Args:
        parts: the target's `VerifierParts`.
        do_sample: whether the call samples (then the first disagreeing draft is kept).

    What it judged, removed and cost is counted by the candidate generator (`DraftStats.verifier_*`).
    """

    def __init__(self, parts: VerifierParts, do_sample: bool = False):
        self.parts, self.do_sample = parts, do_sample
        self.cache = DynamicCache(config=parts.body.config)
        self.cache.activate_past_recording()  # sliding-window layers keep their past until rejected drafts are cut

    @torch.no_grad()
    def keep(self, input_ids: torch.LongTensor, draft: Draft) -> int:
        """How many of `draft`'s tokens go on to the target (all when it agrees with every one)."""
        if len(draft) == 0:
            return 0
        parts = self.parts
        cached = self.cache.get_seq_length()
        keep = min(cached, input_ids.shape[1] - 1)  # entries of the verified prefix are still valid
        if cached > keep:
            self.cache.crop(keep - cached)
        feed = torch.cat([input_ids[0, keep:], draft.tokens[:-1].to(input_ids.device)])[None]
        hidden = parts.body(input_ids=feed, past_key_values=self.cache, use_cache=True).last_hidden_state
        hidden = parts.exit_head(hidden[0, -len(draft) :])  # the positions whose next tokens are the drafts
        best = softcap(F.linear(hidden, parts.rows, parts.row_bias), parts.softcap).max(dim=-1).values  # (k,)
        tokens = draft.tokens.to(hidden.device)
        own = (hidden * parts.weight[tokens]).sum(-1)  # each draft's own logit (k rows, not the vocabulary)
        own = softcap(own if parts.bias is None else own + parts.bias[tokens], parts.softcap)
        # a draft that is the shortlist's best scores equal up to rounding (two different products)
        disagree = (own < best - 1e-4 * (1.0 + best.abs())).nonzero()
        kept = len(draft)
        if disagree.numel():
            first = int(disagree[0, 0])
            kept = min(len(draft), first + 1) if self.do_sample else first
        return kept
