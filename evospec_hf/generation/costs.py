"""`calibrate`: measure once what drafting's choices need from this machine, before the first timed call.

Two of evospec_hf's choices follow measurements rather than rules: the target's verification head picks its matmul
order per row count (`ops/verify_head.py`), and the "cost" draft schedule picks each round's length from the
target's verification seconds per draft length (`schedule.py`). Measured inside `generate`, the first calls pay for
the trials and try lengths they have not timed yet, so a first timed call is slower than later ones. `calibrate`
runs those measurements up front on a synthetic context, and keeps them in the machine's calibration cache
(`ops/calibration.py`): later processes on the same machine and model shape start from them, and `calibrate`
returns at once.
"""

from __future__ import annotations

import statistics
import time

import torch
from transformers import DynamicCache

from ..ops.calibration import machine_costs, save_machine_costs
from ..ops.verify_head import columns_verify_head


@torch.no_grad()
def calibrate(
    model,
    max_draft_tokens: int = 16,
    context_length: int = 128,
    repeats: int = 3,
    force: bool = False,
    progress: bool = True,
) -> dict:
    """Measures `model`'s verification cost for 1..`max_draft_tokens` drafts and settles its verification head.

    Args:
        model: the target.
        max_draft_tokens: the longest round to measure (`EvoSpecConfig.max_draft_tokens`, or `lookup_tokens` if
            larger).
        context_length: tokens already in the KV cache when each verification runs.
        repeats: timed verifications per length (the median is kept).
        force: measure again even if this machine's cache already has every length.
        progress: show a progress bar.

    Returns:
        `{draft length: seconds}`, the table the "cost" schedule reads (also kept in the calibration cache).
    """
    from tqdm.auto import tqdm

    table = machine_costs(model, "verify_seconds")
    lengths = range(1, max_draft_tokens + 1)
    with columns_verify_head(model) as head:
        settled = head is None or all(k + 1 in head.choices for k in lengths)
        if not force and settled and all(k in table for k in lengths):
            return dict(table)
        device = next(model.parameters()).device
        vocab_size = model.get_output_embeddings().weight.shape[0]
        generator = torch.Generator().manual_seed(0)
        context = torch.randint(0, vocab_size, (1, context_length), generator=generator).to(device)
        cache = DynamicCache(config=model.config)
        cache.activate_past_recording()  # sliding-window layers keep their past, so the cache can be cropped back
        model(input_ids=context, past_key_values=cache, use_cache=True, logits_to_keep=1)
        for k in tqdm(lengths, desc="calibrating verification", unit="length", disable=not progress):
            block = torch.randint(0, vocab_size, (1, k + 1), generator=generator).to(device)
            position = torch.arange(context_length, context_length + k + 1, device=device)[None, :]

            def verify() -> float:
                start = time.perf_counter()
                model(
                    input_ids=block, past_key_values=cache, use_cache=True, logits_to_keep=k + 1,
                    position_ids=position,
                )  # fmt: skip
                elapsed = time.perf_counter() - start
                cache.crop(-(k + 1))  # back to the context alone
                return elapsed

            # the head's timing trials first (they alternate two matmul orders), then the timed verifications
            while head is not None and k + 1 not in head.choices:
                verify()
            table[k] = statistics.median(verify() for _ in range(repeats))
    save_machine_costs()
    return dict(table)
