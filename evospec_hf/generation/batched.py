"""Batched speculative decoding: several left-padded prompts in one `generate` call, each row exactly its own output.

transformers' assisted-decoding loop refuses batches (`_assisted_decoding`: "only supported for batch_size = 1"), so
a batch runs this loop instead (`integration.py` routes it here). Each round:

1. every row's own `EvoSpecCandidateGenerator` drafts for that row alone, on the row's tokens without padding (its
   own shortlist, context lookup, drafter cache and draft length rule);
2. the target verifies all rows in one forward over `(rows, 1 + longest draft)`; shorter drafts are padded with
   filler that no kept position can see (it comes after them, and attention is causal);
3. each row accepts its own number of drafts, exactly as the batch-1 loop would (greedy: the drafts that equal the
   target's argmax, then the target's token; sampling: speculative sampling);
4. the KV cache is realigned: rows that accepted fewer tokens than the longest are moved right by the difference and
   get that much more left padding (`realign_cache`). The batch stays left-padded with no holes, the layout plain
   batched `generate` has, so sliding-window layers and position ids stay exact. The other way, every row keeping
   only the fewest drafts any row accepted (`alignment="min"`), throws accepted tokens away; the bench measures both.

Rows that finish (EOS, `max_new_tokens`, a stopping criterion) leave the batch and its cache; the output pads them
as plain `generate` does. Without an EOS token plain `generate` pads nobody: a row that met a stop (a criterion, a
stop string) goes on until every row has met one, and all end at the last row's stop; so do they here. Columns
that are padding in every remaining row are dropped from the cache.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
from transformers.generation.logits_process import (
    EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
    TopPLogitsWarper, TypicalLogitsWarper,
)  # fmt: skip
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput, _speculative_sampling

from ..config import BATCH_ALIGNMENTS
from ..utils import unwrap_peft
from .stats import DraftStats


def left_padding(input_ids: torch.LongTensor, attention_mask: torch.Tensor | None) -> list[int]:
    """Each row's count of left padding, with clear errors for masks a decoder-only batch cannot use."""
    if attention_mask is None:
        return [0] * input_ids.shape[0]
    if attention_mask.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"`attention_mask` has shape {tuple(attention_mask.shape)}, but `input_ids` has shape "
            f"{tuple(input_ids.shape)}: they must match (one 0/1 entry per token)."
        )
    mask = attention_mask.to(torch.long)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("`attention_mask` must hold 0 (padding) and 1 (token) only.")
    if not bool(mask[:, -1].all()):
        rows = torch.nonzero(mask[:, -1] == 0).flatten().tolist()
        raise ValueError(
            f"rows {rows} end in padding: a decoder-only target continues each row from its last token, so a batch "
            "must be padded on the left. Tokenize with `padding_side=\"left\"` (e.g. "
            "`tokenizer(prompts, padding=True, padding_side=\"left\", return_tensors=\"pt\")`)."
        )
    if not bool((mask[:, 1:] >= mask[:, :-1]).all()):
        raise ValueError(
            "`attention_mask` has padding between tokens of a row: evospec_hf batches need each row to be left "
            "padding (zeros) followed by its tokens (ones)."
        )
    pads = (mask == 0).sum(dim=1).tolist()
    if max(pads) == input_ids.shape[1]:
        raise ValueError("a row of the batch is all padding (its attention mask has no 1).")
    return pads


def realign_cache(cache: DynamicCache, shifts: list[int], remove: int) -> None:
    """After a round's forward: moves row i's cached states `shifts[i]` places right (zeros come in on the left, as
    padding), then drops the last `remove` positions of every row. A row whose valid states ended `shifts[i]` before
    the longest row's then ends with it."""
    if any(shifts):
        for layer in cache.layers:
            if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
                continue
            for states in (layer.keys, layer.values):
                for row, shift in enumerate(shifts):
                    if shift:
                        states[row, :, shift:] = states[row, :, :-shift].clone()
                        states[row, :, :shift] = 0
    cache.crop(-remove)  # also when remove == 0: sliding-window layers go back to their window


def trim_left(cache: DynamicCache, columns: int) -> None:
    """Drops the first `columns` positions of every row: padding in all of them, so no query attends to them."""
    if columns <= 0:
        return
    for layer in cache.layers:
        if not layer.is_initialized or layer.keys is None or layer.keys.numel() == 0:
            continue
        if isinstance(layer, DynamicSlidingWindowLayer):  # holds the last min(cumulative, window - 1) positions
            layer.cumulative_length -= columns
            kept = min(layer.keys.shape[-2], layer.cumulative_length)
            start = layer.keys.shape[-2] - kept
        else:
            start = columns
        layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]


def check_cache(cache, model) -> None:
    """A batch's rows are cropped and trimmed layer by layer: only attention layers' keys and values can be."""
    if not isinstance(cache, DynamicCache) or not all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers
    ):
        layers = sorted({type(layer).__name__ for layer in getattr(cache, "layers", [])})
        model = unwrap_peft(model)
        raise ValueError(
            f"batched evospec_hf cannot run {model.config.model_type} ({type(model).__name__}) with this cache: it "
            "needs a dynamic KV cache of attention layers (DynamicCache of DynamicLayer or "
            f"DynamicSlidingWindowLayer), got {type(cache).__name__} with {layers}. Drop `cache_implementation=` / "
            "`past_key_values=` if you set them, or call generate once per prompt."
        )


class BatchCosts:
    """What a batched verification costs, for the rows' "cost" draft length rules.

    One row's verification is nearly free per extra position (the head's weights are read once, memory-bound),
    but a batch's many positions make the target's forward compute-bound: each position a row drafts costs about
    as much as any other row's. The costs are kept as seconds per verified positions: the prior is `calibrate`'s
    table (one row verifying that many positions costs about what the batch's rows cost together; with `batched=True`
    it measures up to 128), and every round's own `(positions, seconds)` is averaged in. Around the last round's
    size the curve is fitted as `fixed + per_position * positions` (least squares over the sizes within a factor
    of 2, at least two), and each row's rule reads `table`: `{k: fixed / rows + per_position * (k + 1)}`, its own
    positions and its share of the rest (k = 0 too: a row may skip drafting). With fewer than two sizes known the
    table stays empty and the rules draft their starting lengths.
    """

    def __init__(self, prior: dict, rows: int, max_draft: int, smoothing: float = 0.7):
        self.rows, self.max_draft, self.smoothing = rows, max_draft, smoothing
        self.seconds = {int(k) + 1: float(v) for k, v in prior.items()}  # positions -> seconds
        self.positions = 2 * rows  # the size the fit is made around: the last round's (first guess: one draft each)
        self.table: dict = {}  # read by every row's rule (the same dict)
        self._refit()

    def observe(self, positions: int, seconds: float, rows: int) -> None:
        old = self.seconds.get(positions)
        self.seconds[positions] = seconds if old is None else self.smoothing * old + (1 - self.smoothing) * seconds
        self.positions, self.rows = positions, rows
        self._refit()

    def _refit(self) -> None:
        if len(self.seconds) < 2:
            return
        near = [p for p in self.seconds if self.positions / 2 <= p <= 2 * self.positions]
        if len(near) < 2:
            near = sorted(self.seconds, key=lambda p: abs(p - self.positions))[:2]
        mean_p = sum(near) / len(near)
        mean_t = sum(self.seconds[p] for p in near) / len(near)
        variance = sum((p - mean_p) ** 2 for p in near)
        per_position = sum((p - mean_p) * (self.seconds[p] - mean_t) for p in near) / variance
        per_position = max(per_position, 0.0)
        fixed = max(0.0, mean_t - per_position * mean_p)
        self.table.update({k: fixed / self.rows + per_position * (k + 1) for k in range(self.max_draft + 1)})


@dataclass
class _Row:
    """One prompt of the batch while it generates."""

    index: int  # its row in the caller's batch
    prompt: torch.LongTensor  # `(1, padded prompt length)`, as the caller padded it
    prompt_pad: int  # its padding there
    tokens: torch.LongTensor  # `(1, n)`: its prompt without padding, then what it generated
    pad: int  # left padding in the batch layout now (its prompt's own, plus what realignment added)
    limit: int  # its `max_length` counted without its prompt's padding
    generator: object
    stats: DraftStats
    outputs: object = None  # its slice of the target's last forward (a feature drafter reads the hidden states)
    done: bool = False
    stopped_at: int | None = None  # how many tokens it had generated when it first met a stop
    generated: list = field(default_factory=list)


@torch.no_grad()
def batched_assisted_decoding(
    model,
    input_ids: torch.LongTensor,
    logits_processor,
    stopping_criteria: StoppingCriteriaList,
    generation_config,
    new_generator,
    model_kwargs: dict,
    alignment: str = "ragged",
    costs: BatchCosts | None = None,
    screen=None,
) -> tuple[torch.LongTensor | GenerateDecoderOnlyOutput, list[DraftStats], float]:
    """Speculative decoding of a left-padded batch (see the module docstring).

    Args:
        new_generator: `(row_ids (1, n), row_stats) -> EvoSpecCandidateGenerator` for one row.
        model_kwargs: what transformers prepared (`attention_mask`, `past_key_values`, `use_cache`, ...).
        alignment: "ragged" (each row keeps what it accepted) or "min" (every row keeps the fewest any row accepted).
        costs: the rows' shared verification costs, updated after every round (None: not kept).
        screen: the call's `HeadScreen` (`ops/verify_head.py`), told which positions of each forward are read.

    Returns:
        the sequences as plain `generate` returns them (rows padded after they end), each row's `DraftStats`, and
        the seconds spent in the target's batched verification (forward and acceptance).
    """
    if alignment not in BATCH_ALIGNMENTS:
        raise ValueError(f"alignment must be one of {BATCH_ALIGNMENTS}, got {alignment!r}")
    _check_generation_config(generation_config)
    extra = _forwarded_kwargs(model_kwargs)
    pads = left_padding(input_ids, model_kwargs.get("attention_mask"))
    cache = model_kwargs.get("past_key_values")
    check_cache(cache, model)
    cache.activate_past_recording()
    pad_id = generation_config._pad_token_tensor
    eos = generation_config._eos_token_tensor
    criteria = StoppingCriteriaList(
        [c for c in stopping_criteria if not isinstance(c, (MaxLengthCriteria, EosTokenCriteria))]
    )
    processors = logits_processor if logits_processor is not None and len(logits_processor) > 0 else None
    filler = int(pad_id) if pad_id is not None else 0

    rows: list[_Row] = []
    try:
        for i, pad in enumerate(pads):
            tokens = input_ids[i : i + 1, pad:]
            stats = DraftStats()
            generator = new_generator(tokens, stats)
            limit = generation_config.max_length - pad
            generator.max_length = limit  # its room to draft, counted on the row without padding
            rows.append(_Row(i, input_ids[i : i + 1], pad, tokens, pad, limit, generator, stats))
        verify_seconds = _loop(model, input_ids, rows, cache, extra, processors, criteria, eos, filler,
                               generation_config.do_sample, alignment, costs, screen)  # fmt: skip
    finally:
        for row in rows:
            row.generator.close()
        if screen is not None:
            screen.rows_read = None

    if eos is None:  # every row as long as the last row's stop (see `_loop`)
        end = max(row.stopped_at if row.stopped_at is not None else len(row.generated) for row in rows)
        for row in rows:
            del row.generated[end:]
    longest = max(len(row.generated) for row in rows)
    fill = filler if pad_id is None else int(pad_id)
    sequences = input_ids.new_full((len(rows), input_ids.shape[1] + longest), fill)
    sequences[:, : input_ids.shape[1]] = input_ids
    for row in rows:
        if row.generated:
            sequences[row.index, input_ids.shape[1] : input_ids.shape[1] + len(row.generated)] = torch.tensor(
                row.generated, dtype=sequences.dtype
            )
    if generation_config.return_dict_in_generate:
        sequences = GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences, [row.stats for row in rows], verify_seconds


def _loop(model, input_ids, rows: list[_Row], cache, extra, processors, criteria, eos, filler, do_sample, alignment,
          costs, screen) -> float:  # fmt: skip
    verify_seconds = 0.0
    active = list(rows)
    cached = 0  # positions of the batch layout held in the cache: all but the last token
    first = True
    while active:
        drafts, draft_logits = [], []
        for row in active:
            kwargs = {"model_outputs": row.outputs} if row.generator.requires_model_outputs else {}
            candidates, logits = row.generator.get_candidates(row.tokens, **kwargs)
            drafts.append(candidates[0, row.tokens.shape[1] :].to(input_ids.device))
            draft_logits.append(logits)
        began = time.perf_counter()
        for row in active:  # each row's round is verified from now (its stats and draft length rule read this)
            row.generator.verification_started(began)
        width = max(len(d) for d in drafts)  # the longest draft; shorter ones are padded with filler
        length = active[0].pad + active[0].tokens.shape[1]  # the batch layout's length (every row's is the same)
        ids = input_ids.new_full((len(active), length + width), filler)
        mask = input_ids.new_ones((len(active), length + width))
        for r, (row, draft) in enumerate(zip(active, drafts)):
            if first:
                ids[r, :length] = row.prompt[0]
            else:
                ids[r, row.pad : length] = row.tokens[0]
            ids[r, length : length + len(draft)] = draft
            mask[r, : row.pad] = 0
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        if screen is not None:  # the head skips the padding after shorter drafts: nobody reads its logits
            lengths = torch.tensor([len(d) for d in drafts])
            screen.rows_read = (torch.arange(width + 1)[None, :] <= lengths[:, None]).flatten()
        model_inputs = model.prepare_inputs_for_generation(
            ids, next_sequence_length=None if first else ids.shape[1] - cached, past_key_values=cache,
            attention_mask=mask, position_ids=positions, use_cache=True, is_first_iteration=first, **extra,
        )  # fmt: skip
        if "logits_to_keep" in model_inputs:
            model_inputs["logits_to_keep"] = width + 1
        if active[0].generator.requires_model_outputs:
            model_inputs |= active[0].generator.model_kwargs_overrides
        outputs = model(**model_inputs)
        logits = outputs.logits[:, -width - 1 :].float()
        if processors is not None and all(isinstance(p, SCORES_ONLY) for p in processors):
            logits = _process_all(processors, logits)

        accepted, scores = [], []
        for r, (row, draft) in enumerate(zip(active, drafts)):
            row_logits = logits[r : r + 1, : len(draft) + 1]
            if processors is not None and not all(isinstance(p, SCORES_ONLY) for p in processors):
                row_logits = _process(processors, row, draft, row_logits, len(rows))
            valid = _select(row, draft, draft_logits[r], row_logits, do_sample)
            valid = _cut(valid, row.limit - row.tokens.shape[1], eos)
            accepted.append(valid)
            scores.append(row_logits)
        if alignment == "min":
            fewest = min(len(v) for v in accepted)
            accepted = [v[:fewest] for v in accepted]
        longest = max(len(v) for v in accepted)
        shifts = [longest - len(v) for v in accepted]
        realign_cache(cache, shifts, remove=width + 1 - longest)

        keep = []
        for r, (row, draft, valid) in enumerate(zip(active, drafts, accepted)):
            if row.generator.requires_model_outputs:
                start = row.pad if first else 0
                row.outputs = SimpleNamespace(
                    hidden_states=tuple(None if h is None else h[r : r + 1, start:] for h in outputs.hidden_states)
                )
            row.tokens = torch.cat([row.tokens, valid[None]], dim=-1)
            row.generated.extend(valid.tolist())
            row.pad += shifts[r]
            n = len(valid) - 1  # accepted drafts
            row.generator.update_candidate_strategy(row.tokens, scores[r][:, : len(draft) + 1], n)
            full = row.tokens.shape[1] >= row.limit
            if row.stopped_at is None and (
                (eos is not None and bool(torch.isin(valid[-1], eos)))
                or full
                or (len(criteria) > 0 and bool(criteria(row.tokens, scores[r][:, n]).any()))
            ):
                row.stopped_at = len(row.generated)
            row.done = full or (eos is not None and row.stopped_at is not None)
        if eos is None and all(row.stopped_at is not None for row in rows):
            # without an EOS, plain `generate` pads nobody: a row that met a stop keeps generating until the last
            # row meets its own, and every row ends at that length (`batched_assisted_decoding` cuts them there)
            end = max(row.stopped_at for row in rows)
            for row in active:
                row.done = row.done or len(row.generated) >= end
        for r, row in enumerate(active):
            if not row.done:
                keep.append(r)
        elapsed = time.perf_counter() - began
        verify_seconds += elapsed
        if costs is not None and not first:  # the first forward also reads the prompts
            costs.observe(sum(len(d) + 1 for d in drafts), elapsed, len(active))
        cached = length + longest - 1
        first = False
        if len(keep) < len(active):
            if keep:
                cache.batch_select_indices(torch.tensor(keep, device=input_ids.device))
            active = [active[r] for r in keep]
        if active:
            common = min(row.pad for row in active)
            if common:
                trim_left(cache, common)
                cached -= common
                for row in active:
                    row.pad -= common
    return verify_seconds


# warpers that read the scores only, never the ids: applied to every row and position in one call
SCORES_ONLY = (
    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, MinPLogitsWarper, TypicalLogitsWarper,
    EpsilonLogitsWarper, EtaLogitsWarper,
)  # fmt: skip


def _process_all(processors, logits: torch.Tensor) -> torch.Tensor:
    """Scores-only warpers (temperature, top-k, ...) over `(rows, positions, vocab)` logits at once."""
    flat = logits.reshape(-1, logits.shape[-1])
    dummy = torch.zeros((flat.shape[0], 1), dtype=torch.long, device=flat.device)
    return processors(dummy, flat.clone()).reshape(logits.shape)


def _process(processors, row: _Row, draft: torch.LongTensor, logits: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The call's logits processors at each of the row's verified positions, given its ids as plain batched
    `generate` gives them (its padded prompt, then its tokens) and at its own index in a batch of the call's size
    (the other rows are copies of it): processors may keep per-row state (`prompt_ignore_length`, a prefix
    function's `batch_id`) or count the padding (`min_length`)."""
    sequence = torch.cat([row.prompt[:, : row.prompt_pad], row.tokens, draft[None]], dim=-1)
    start = row.prompt_pad + row.tokens.shape[1]
    processed = logits.clone()
    for j in range(logits.shape[1]):
        ids = sequence[:, : start + j].repeat(batch_size, 1)
        scores = processed[:, j].repeat(batch_size, 1)
        processed[:, j] = processors(ids, scores)[row.index]
    return processed


def _select(row, draft, draft_logits, logits, do_sample) -> torch.LongTensor:
    """The row's new tokens: its accepted drafts, then the target's own token (transformers' batch-1 rule)."""
    k = len(draft)
    if do_sample and draft_logits is not None and k:
        candidates = torch.cat([row.tokens, draft[None]], dim=-1)
        valid, _ = _speculative_sampling(candidates, draft_logits.to(logits.device), k, logits)
        return valid[0]
    if do_sample:
        selected = torch.multinomial(logits[0].softmax(dim=-1), num_samples=1).squeeze(1)
    else:
        selected = logits[0].argmax(dim=-1)
    matches = int(((~(draft == selected[:k])).cumsum(dim=-1) < 1).sum())
    return selected[: matches + 1]


def _cut(valid: torch.LongTensor, budget: int, eos) -> torch.LongTensor:
    """At most `budget` tokens, and none after the first EOS (as transformers' loop cuts a round)."""
    valid = valid[:budget]
    if eos is not None:
        hits = torch.isin(valid, eos.to(valid.device)).nonzero()
        if hits.numel():
            valid = valid[: int(hits[0]) + 1]
    return valid


_OWN_KWARGS = {"attention_mask", "position_ids", "past_key_values", "use_cache", "cache_position"}


def _forwarded_kwargs(model_kwargs: dict) -> dict:
    """Model kwargs passed on to every forward; per-position tensors other than the mask are refused."""
    extra = {}
    for key, value in model_kwargs.items():
        if key in _OWN_KWARGS or value is None:
            continue
        if key == "inputs_embeds":
            raise ValueError(
                "a batch of `inputs_embeds` without `input_ids` cannot be drafted for: evospec_hf's drafters and "
                "context lookup read token ids. Pass `input_ids` (and `attention_mask`), or call generate once per "
                "prompt."
            )
        if isinstance(value, torch.Tensor):
            raise ValueError(
                f"batched evospec_hf does not support the model input `{key}`; call generate once per prompt."
            )
        extra[key] = value
    return extra


def _check_generation_config(generation_config) -> None:
    wanted = [
        name for name in ("output_scores", "output_logits", "output_attentions", "output_hidden_states")
        if getattr(generation_config, name, False)
    ]  # fmt: skip
    if wanted:
        raise ValueError(
            f"batched evospec_hf returns `sequences` only; {', '.join(wanted)} is not supported for a batch. Call "
            "generate once per prompt for them."
        )
    if generation_config.assistant_ensemble_weight is not None:
        raise ValueError("`assistant_ensemble_weight` is not supported for a batch; call generate once per prompt.")
