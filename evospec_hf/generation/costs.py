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
from ..ops.verify_head import HeadScreen, columns_verify_head, row_bucket, screen_pending


@torch.no_grad()
def calibrate(
    model,
    max_draft_tokens: int = 16,
    context_length: int = 128,
    repeats: int = 3,
    force: bool = False,
    progress: bool = True,
    batched: bool = False,
) -> dict:
    """Measures `model`'s verification cost for 1..`max_draft_tokens` drafts (and, with `batched`, for the positions
    of batched rounds, `BATCH_LENGTHS`) and settles its verification head: the matmul order per row count, and
    where the int8 screen (`EvoSpecConfig.screen_head="auto"`) is faster.

    Args:
        model: the target.
        max_draft_tokens: the longest round to measure (`EvoSpecConfig.max_draft_tokens`, or `lookup_tokens` if
            larger).
        context_length: tokens already in the KV cache when each verification runs.
        repeats: timed verifications per length (the median is kept).
        force: measure again even if this machine's cache already has every length.
        progress: show a progress bar.
        batched: also measure `BATCH_LENGTHS`, the many positions a batched call verifies at once (for batched
            `generate` calls; these lengths take most of the time on a large head).

    Returns:
        `{draft length: seconds}`, the table the "cost" schedule reads (also kept in the calibration cache).
    """
    from tqdm.auto import tqdm

    table = machine_costs(model, "verify_seconds")
    lengths = [*range(1, max_draft_tokens + 1), *(k for k in BATCH_LENGTHS if batched and k > max_draft_tokens)]
    # the screened head (greedy calls) is timed against the full head per row count too, from 1 row (plain greedy)
    screen = HeadScreen(mode="auto", enabled=True)
    with columns_verify_head(model, screen) as head:
        settled = head is None or all(_head_settled(model, head, k + 1) for k in lengths)
        if not force and settled and not screen_pending(model, 1) and all(k in table for k in lengths):
            return dict(table)
        screen.enabled = False  # the text is generated with a processor (min_new_tokens): the full head
        text = _own_text(model, context_length + max(lengths) + 1)
        screen.enabled = True
        context = text[:, :context_length]
        cache = DynamicCache(config=model.config)
        cache.activate_past_recording()  # sliding-window layers keep their past, so the cache can be cropped back
        model(input_ids=context, past_key_values=cache, use_cache=True, logits_to_keep=1)
        one = text[:, context_length : context_length + 1]
        for _ in range(_MOST_TRIALS):  # one row: plain greedy through the screen
            if head is None or not screen_pending(model, 1):
                break
            model(input_ids=one, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.crop(-1)
        for k in tqdm(lengths, desc="calibrating verification", unit="length", disable=not progress):
            block = text[:, context_length : context_length + k + 1]
            position = torch.arange(context_length, context_length + k + 1, device=block.device)[None, :]

            def verify() -> float:
                start = time.perf_counter()
                model(
                    input_ids=block, past_key_values=cache, use_cache=True, logits_to_keep=k + 1,
                    position_ids=position,
                )  # fmt: skip
                elapsed = time.perf_counter() - start
                cache.crop(-(k + 1))  # back to the context alone
                return elapsed

            # the trials first: the full head's matmul order (two orders alternate), then the screen against that
            # full head; then the timed verifications
            screen.enabled = False
            for _ in range(_MOST_TRIALS):
                if head is None or row_bucket(k + 1) in head.choices:  # row counts share trials in buckets
                    break
                verify()
            screen.enabled = True
            for _ in range(_MOST_TRIALS):
                if head is None or not screen_pending(model, k + 1):
                    break
                verify()
            table[k] = statistics.median(verify() for _ in range(repeats))
    save_machine_costs(force=True)  # the lengths measured again are written too (a plain save writes new ones only)
    return dict(table)


# a head decides after a few trials (`VerifyHead.trials`, the screen's); bounded so that a decision never made
# (a row count the head files under another key) costs a few verifications, not a hang
_MOST_TRIALS = 16


def _head_settled(model, head, rows: int) -> bool:
    return row_bucket(rows) in head.choices and not screen_pending(model, rows)


# also measured: a batched round verifies rows x (drafts + 1) positions, and one row with that many positions costs
# about what they cost together (the same rows through every matmul); `generation/batched.py` reads them
BATCH_LENGTHS = (23, 31, 47, 63, 95, 127)


def _own_text(model, length: int) -> torch.LongTensor:
    """`length` tokens of the model's own greedy text after its BOS token, `(1, length)`.

    The screen's cost depends on how peaked the logits are: on random tokens the logits are flat, thousands of rows
    survive and the screen always loses, while on text (any text the model writes or reads) a handful survive. So the
    calibration verifies the model's own text, as it would verify its drafts. EOS is held off (`min_new_tokens`).
    """
    device = next(model.parameters()).device
    bos = model.generation_config.bos_token_id
    bos = model.config.get_text_config().bos_token_id if bos is None else bos
    start = torch.tensor([[0 if bos is None else int(bos)]], device=device)
    text = model.generate(
        start, attention_mask=torch.ones_like(start), max_new_tokens=length, min_new_tokens=length, do_sample=False
    )
    return text[:, 1 : length + 1]
