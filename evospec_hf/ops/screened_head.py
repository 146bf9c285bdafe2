"""The target's LM head for greedy verification: an int8 screen with a proven error bound, rescored exactly.

Greedy verification needs only the argmax of `h @ W.T + b` at each position, not all V logits. For a row w of the
head, its int8 copy ŵ (one scale per row) and the quantized activation ĥ:

    |w·h − ŵ·ĥ|  ≤  ‖w − ŵ‖·‖h‖ + ‖ŵ‖·‖h − ĥ‖        (Cauchy–Schwarz; every norm is known)

`screened_logits` computes ŵ·ĥ for every row with an integer matmul (int8 weights read once: memory-bound, about
4x less to read than fp32), takes each position's best approximate row, computes it exactly and uses it as a floor,
and keeps every row whose approximate logit plus its bound reaches the floor. Those survivors are computed exactly
in fp32 (one product over their union); every other row is provably below the floor, so it gets -inf. The argmax
at every position is the full head's. Every row is still considered; only the arithmetic changes.

**Top k.** Top-k sampling reads only each position's k best rows. With `top_k=k` the floor is the lowest of the k
best approximate rows computed exactly, which is no higher than the true k-th best logit, so every row of the true
top k (and every row tied with its k-th) survives with its exact logit: a top-k filter keeps the same rows, with the
same values, as from the full head. On Gemma-3-270M, k = 64: survivors median 159, max 546.

**Residual activation.** ĥ is quantized in two int8 rows per position, the second holding what the first missed
(ĥ = s1·q1 + s2·q2), so ‖h − ĥ‖ is about 1/63 of one row's. The matmul reads the weights once whatever the row
count, so the second row costs almost nothing, and the bound is then dominated by the weights' own quantization.
Measured on Gemma-3-270M's final hidden states (776 positions of eight everyday prompts: summary, email,
translation, roleplay, word problem, retrieval QA, explanation; `benchmarks/screened_head.py`): survivors per
position median 2, p90 8, p99 15, max 37; with one activation row, median 42, p90 406, p99 2,872, max 4,913.

**The arithmetic is controlled, not trusted** (the bound must hold for what is actually computed):
- The integer product is fbgemm's dynamic quantized linear on weights packed with unit scales, handed
  activations that are already integers: the position rows hold integers in [-63, 63] and one extra row holds -63
  and 64, so its per-tensor quantization chooses scale 1 and zero point 63 and maps every value to itself. It
  returns the integer sums (exact in fp32 below 2**24). The 7-bit range (`reduce_range=True`) keeps the u8 x s8
  pair sums of CPUs without VNNI inside 16 bits. `Int8Head.pack` checks the machine first: products of the extreme
  values must come back exact, or the screen is not used.
- fbgemm pads packed rows to a multiple of 512 values; the columns past 512 are folded four rows to one
  (`PackedRows`), so Gemma's copy holds 171 MB instead of about 270 MB, and one position's product is faster.
- With integer sums the only float operations are the row scale, the position scale, the residual row's sum, the
  bias and the bound's own sums. They get a margin of 12 units in the last place of ‖ŵ‖·‖ĥ‖ (8 of |b|), and every
  factor of the bound is rounded up.
- The exact logits are fp32 dot products whose rounding depends on the order of the sum. The bound adds
  2·γ·‖w‖·‖h‖ (γ = 1.01·d·2⁻²⁴, the standard bound on a d-term fp32 dot product), so a row excluded here is below
  the floor whatever order the full head would sum in; the argmax is the full head's up to the same rounding
  that verifying several positions in one forward already has (docs/concepts/exactness.md).
- A monotone transform after the head (Gemma 2's softcap, Cohere's positive logit scale) keeps the argmax, except
  where it maps the best excluded bound and the best survivor to the same float; then the full head runs.
- Non-finite hidden states, or more survivors than `max_survivors`, run the full head (counted as fallbacks).

The torch functions here are the CPU path and the reference for the GPU kernel beside them
(`triton_screened_head.py`).
"""

from __future__ import annotations

import threading
import warnings

import torch
import torch.nn.functional as F

from .softcap import LogitTransform, softcap as apply_softcap

ACTIVATION_MAX = 63  # |q| of the activation rows: a 7-bit range, exact on CPUs without VNNI (see above)
BLOCK = 512  # fbgemm pads a packed int8 row to a multiple of this many values (AVX2 blocking)
PRODUCT_MARGIN = 12  # units in the last place of ‖ŵ‖·‖ĥ‖ for the float steps after the integer sums
UNIT = 2.0**-24  # fp32 unit roundoff
ROUND_UP = 1 + 1e-6  # factors of the bound are rounded up by this much (far above fp32's relative rounding)


def _quantized_engine_ok() -> bool:
    return "fbgemm" in torch.backends.quantized.supported_engines and torch.backends.quantized.engine in (
        "fbgemm", "x86",
    )  # fmt: skip


def _prepack(q: torch.Tensor):
    """fbgemm's packed int8 weight: `q` (V, d) int8 with unit scales, so the product returns the integer sums."""
    with warnings.catch_warnings():  # torch marks its quantized tensors as deprecated; the probe catches a removal
        warnings.simplefilter("ignore")
        ones, zeros = torch.ones(q.shape[0], dtype=torch.float64), torch.zeros(q.shape[0], dtype=torch.long)
        quantized = torch._make_per_channel_quantized_tensor(q, ones, zeros, 0)
        return torch.ops.quantized.linear_prepack(quantized, None)


def _integer_product(rows: torch.Tensor, packed) -> torch.Tensor:
    """`rows @ q.T` for integer-valued `rows` (R, d), |values| <= 63, through fbgemm: one extra row holding -63 and
    64 makes its per-tensor activation quantization choose scale 1 and zero point 63, the identity."""
    span = rows.new_zeros(1, rows.shape[1])
    span[0, 0], span[0, 1] = -ACTIVATION_MAX, ACTIVATION_MAX + 1
    return torch.ops.quantized.linear_dynamic(torch.cat([rows, span]), packed, True)[: rows.shape[0]]


class PackedRows:
    """`q` (V, d) int8 packed for fbgemm's integer product, without its padding.

    fbgemm pads a packed row to a multiple of `BLOCK` (512) values: Gemma-3's 640 would hold 1,024. So the first
    `BLOCK`-multiple columns are packed as they are, and the columns past them (128 for Gemma) are folded: `fold`
    rows' tails side by side in one row of at most `BLOCK` (four for Gemma). A position's tail then goes in `fold`
    activation rows, one per slot, zeros elsewhere. `product(rows)` is `rows @ q.T`, the integer sums as fp32:
    exact below 2**24 (|sum| <= 63·128·d, so for d up to 2,080); wider heads round by a relative ulp per step,
    which the bound's float margin covers.
    """

    def __init__(self, q: torch.Tensor):
        self.rows, width = q.shape
        self.main = width // BLOCK * BLOCK
        self.tail = width - self.main
        self.fold = BLOCK // self.tail if 0 < self.tail <= BLOCK // 2 else 1
        if self.fold == 1:  # nothing to fold: packed whole
            self.main, self.tail = width, 0
        self.packed_main = _prepack(q[:, : self.main].contiguous()) if self.main else None
        self.packed_tail = None
        self.per_slot = -(-self.rows // self.fold)  # folded rows (head rows per slot)
        if self.tail:
            tails = q.new_zeros(self.fold * self.per_slot, self.tail)
            tails[: self.rows] = q[:, self.main :]
            folded = tails.view(self.fold, self.per_slot, self.tail).permute(1, 0, 2).reshape(self.per_slot, -1)
            self.packed_tail = _prepack(folded.contiguous())
        self.nbytes = self.rows * self.main + self.per_slot * self.fold * self.tail

    def product(self, rows: torch.Tensor) -> torch.Tensor:
        """`(R, d)` integer-valued rows -> `(R, V)` fp32 integer sums."""
        out = _integer_product(rows[:, : self.main].contiguous(), self.packed_main) if self.main else None
        if self.tail:
            count = rows.shape[0]
            spread = rows.new_zeros(count, self.fold, self.fold * self.tail)
            for slot in range(self.fold):
                spread[:, slot, slot * self.tail : (slot + 1) * self.tail] = rows[:, self.main :]
            part = _integer_product(spread.view(count * self.fold, -1), self.packed_tail)
            part = part.view(count, self.fold * self.per_slot)[:, : self.rows]
            out = part if out is None else out.add_(part)  # exact for integers below 2**24
        return out


def integer_rows_product(rows: torch.Tensor, packed: PackedRows) -> torch.Tensor:
    """`rows @ q.T` for integer-valued `rows` (R, d) with |values| <= 63: the exact integer sums, as fp32."""
    return packed.product(rows)


_probe_lock = threading.Lock()
_probe_result: bool | None = None


def integer_product_is_exact() -> bool:
    """Whether this machine's int8 product returns exact sums for the extreme values the screen can feed it.

    A saturating 16-bit pair sum (u8 x s8 on CPUs without VNNI, out of range) would show on these: every sign
    combination of ±127/-128 weights against ±63/64 activations, in a row wide enough to sum to millions.
    Checked once per process.
    """
    global _probe_result
    with _probe_lock:
        if _probe_result is None:
            _probe_result = _probe()
        return _probe_result


def _probe() -> bool:
    if not _quantized_engine_ok():
        return False
    try:
        d = 640
        weights = torch.tensor([127, -127, -128, 1], dtype=torch.int8)[:, None].expand(4, d).clone()
        weights[3, ::2] = -128
        rows = torch.tensor([63.0, -63.0, 1.0])[:, None].expand(3, d).clone()
        rows[2, ::2] = -63.0
        got = integer_rows_product(rows, PackedRows(weights)).double()  # 512 columns packed, 128 folded
        want = rows.double() @ weights.double().T
        return bool(torch.equal(got, want))
    except Exception:  # quantized ops missing (a build without fbgemm, or removed in a later torch)
        return False


class Int8Head:
    """A head's int8 copy and the per-row factors of the bound. Built by `pack`; read-only afterwards.

    Attributes:
        packed (`PackedRows`): the `(V, d)` int8 rows, packed for fbgemm (what the screen reads).
        scales (`torch.FloatTensor` of shape `(V,)`): each row's scale (ŵ = scale·q).
        weight_error (`torch.FloatTensor` of shape `(V,)`): ‖w − ŵ‖ + 2γ‖w‖, rounded up.
        weight_norm (`torch.FloatTensor` of shape `(V,)`): ‖ŵ‖, rounded up.
        bias_margin (`torch.FloatTensor` of shape `(V,)` or None): the rounding margin of a bias.
        nbytes: memory the copy adds (the packed weight and the factors).
        key: what the copy was made from (the weight's storage and version); `matches` compares it.
    """

    def __init__(self, packed, scales, weight_error, weight_norm, bias_margin, nbytes, key):
        self.packed, self.scales, self.weight_error, self.weight_norm = packed, scales, weight_error, weight_norm
        self.bias_margin, self.nbytes, self.key = bias_margin, nbytes, key

    @staticmethod
    def source_key(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple:
        """Changes whenever the weights change in place (`_version`) or are replaced (storage)."""
        key = (weight.data_ptr(), weight._version, tuple(weight.shape))
        return key if bias is None else (*key, bias.data_ptr(), bias._version)

    def matches(self, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
        return self.key == self.source_key(weight, bias)

    @classmethod
    @torch.no_grad()
    def pack(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> Int8Head | None:
        """The int8 copy of `weight` (V, d), fp32 on CPU; None where the screen cannot be exact here (another dtype
        or device, non-finite weights, no exact integer product on this machine)."""
        if weight.dtype != torch.float32 or weight.device.type != "cpu" or weight.dim() != 2:
            return None
        if not integer_product_is_exact():
            return None
        if not bool(torch.isfinite(weight).all()) or (bias is not None and not bool(torch.isfinite(bias).all())):
            return None
        key = cls.source_key(weight, bias)
        rows, d = weight.shape
        gamma = 1.01 * d * UNIT
        # filled a slice at a time (float64 factors of one slice at once): the peak is the int8 copy, once
        q = torch.empty(rows, d, dtype=torch.int8)
        scales, errors, norms = torch.empty(rows), torch.empty(rows, dtype=torch.float64), torch.empty(rows, dtype=torch.float64)
        for start in range(0, rows, 16384):
            w, part = weight[start : start + 16384], slice(start, start + 16384)
            scale = scales[part] = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
            q[part] = torch.round(w / scale[:, None]).clamp_(-127, 127)
            w_hat = q[part].double().mul_(scale.double()[:, None])  # exact in float64
            w64 = w.double()
            norms[part] = w_hat.norm(dim=1)
            errors[part] = w_hat.sub_(w64).norm(dim=1).add_(2 * gamma * w64.norm(dim=1))
            del w_hat, w64
        packed = PackedRows(q)
        del q
        weight_error = (errors * ROUND_UP).float()
        weight_norm = (norms * ROUND_UP).float()
        bias_margin = None if bias is None else (bias.double().abs() * (8 * UNIT) * ROUND_UP).float()
        nbytes = packed.nbytes + 4 * 3 * rows + (0 if bias is None else 4 * rows)
        return cls(packed, scales, weight_error, weight_norm, bias_margin, nbytes, key)


def quantize_positions(
    h: torch.Tensor, residual: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two integer rows per position: h ≈ s1·q1 + s2·q2 (the second quantizes what the first missed), or only the
    first with `residual=False`.

    Args:
        h (`torch.FloatTensor` of shape `(P, d)`).

    Returns:
        `(q, scales, h_norm, miss)`: `q` of shape `(2P, d)` (integers in [-63, 63]: the P first rows, then the P
        residual rows; `(P, d)` without the residual), `scales` `(2P,)` (or `(P,)`), and per position ‖h‖ and
        ‖h − ĥ‖ in float64.
    """
    first_scale = (h.abs().amax(dim=1) / ACTIVATION_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    first = torch.round(h / first_scale[:, None]).clamp_(-ACTIVATION_MAX, ACTIVATION_MAX)
    h64 = h.double()
    if not residual:
        miss = (h64 - first.double() * first_scale.double()[:, None]).norm(dim=1)
        return first, first_scale, h64.norm(dim=1), miss
    rest = h - first * first_scale[:, None]
    rest_scale = (rest.abs().amax(dim=1) / ACTIVATION_MAX).clamp_min(torch.finfo(torch.float32).tiny)
    second = torch.round(rest / rest_scale[:, None]).clamp_(-ACTIVATION_MAX, ACTIVATION_MAX)
    h_hat = first.double() * first_scale.double()[:, None] + second.double() * rest_scale.double()[:, None]
    return torch.cat([first, second]), torch.cat([first_scale, rest_scale]), h64.norm(dim=1), (h64 - h_hat).norm(dim=1)


class ScreenResult:
    """What one screened head call did: `survivors` per position, `rescored` rows (their union), `fallback` (why
    the full head ran instead, or None)."""

    __slots__ = ("survivors", "rescored", "fallback")

    def __init__(self, survivors: list, rescored: int, fallback: str | None = None):
        self.survivors, self.rescored, self.fallback = survivors, rescored, fallback


@torch.no_grad()
def screened_logits(
    h: torch.Tensor,
    head: Int8Head,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    max_survivors: int = 16384,
    softcap: float | LogitTransform | None = None,
    residual: bool = True,
    top_k: int = 1,
) -> tuple[torch.Tensor | None, ScreenResult]:
    """Logits whose argmax (or top `top_k`) at every position is the full head's `h @ weight.T + bias`.

    Args:
        h (`torch.FloatTensor` of shape `(P, d)`): the positions' final hidden states.
        head (`Int8Head`): `weight`'s int8 copy.
        weight (`torch.FloatTensor` of shape `(V, d)`), bias (`(V,)` or None): the head itself, for the rescoring.
        max_survivors: above this many rows to rescore (the union over positions), the full head runs instead.
        softcap: the monotone transform the model applies after the head: a softcap `cap` (`tanh(x / cap) * cap`)
            or its `LogitTransform` (a positive logit scale too), if any.
        residual: quantize each position in two int8 rows (few survivors) or one (half the integer work, more
            survivors): which is faster depends on the machine and the position count.
        top_k: keep every row that can be among each position's `top_k` best (1: the argmax). The floor is then
            the k-th best of the k best approximate rows, computed exactly: no lower than the true k-th best, so
            every row of the true top k (ties at the k-th included) survives with its exact logit, and a top-k
            filter (`TopKLogitsWarper`) keeps the same rows from these logits as from the full head's. Above the
            head's rows, every row is kept (as the filter keeps them).

    Returns:
        `(logits, result)`: `logits` of shape `(P, V)` hold the exact logits of the survivors and -inf elsewhere,
        or None when the full head must run (`result.fallback` says why).
    """
    positions = h.shape[0]
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    top_k = min(top_k, weight.shape[0])  # as a top-k filter does
    if not bool(torch.isfinite(h).all()):
        return None, ScreenResult([], 0, "non-finite hidden state")
    q, scales, h_norm, miss = quantize_positions(h, residual)
    # ŵ·ĥ for every row: the integer sums times the row scale, times each position's scales
    products = integer_rows_product(q, head.packed).mul_(head.scales)
    approx = products[:positions].mul_(scales[:positions, None])
    if residual:
        approx.add_(products[positions:] * scales[positions:, None])
    if bias is not None:
        approx.add_(bias)
    # the floor: each position's k best approximate rows, computed exactly, their lowest value minus what a sum in
    # another order may differ by (2γ); the true k-th best logit is at least this
    best = approx.argmax(dim=1, keepdim=True) if top_k == 1 else approx.topk(top_k, dim=1, sorted=False).indices
    best_rows = weight[best]  # (P, k, d)
    floor = (best_rows * h[:, None, :]).sum(dim=2, dtype=torch.float32)
    gamma = 1.01 * h.shape[1] * UNIT
    floor_slack = 2 * gamma * best_rows.double().norm(dim=2) * h_norm[:, None]
    if bias is not None:
        floor = floor + bias[best]
        floor_slack = floor_slack + 2 * gamma * bias[best].double().abs()
    floor = (floor.double() - floor_slack * ROUND_UP).amin(dim=1).float()
    # the bound, per (position, row): ‖w − ŵ‖·‖h‖ + ‖ŵ‖·(‖h − ĥ‖ + float margin of ŵ·ĥ) (+ the bias's margin)
    h_hat_norm = h_norm + miss
    activation_term = ((miss + PRODUCT_MARGIN * UNIT * h_hat_norm) * ROUND_UP).float()
    upper = approx.addcmul_((h_norm * ROUND_UP).float()[:, None], head.weight_error[None, :])
    upper.addcmul_(activation_term[:, None], head.weight_norm[None, :])
    if head.bias_margin is not None:
        upper.add_(head.bias_margin)
    alive = upper >= floor[:, None]
    alive.scatter_(1, best, True)
    survivors = alive.sum(dim=1).tolist()
    rows = alive.any(dim=0).nonzero().squeeze(1)
    if rows.numel() > max_survivors:
        return None, ScreenResult(survivors, int(rows.numel()), "too many survivors")
    exact = F.linear(h, weight[rows], None if bias is None else bias[rows])
    if softcap is not None:
        # the best excluded row's bound and the k-th best survivor must stay apart after the transform
        excluded_best = upper.masked_fill_(alive, float("-inf")).amax(dim=1)
        kth = exact.amax(dim=1) if top_k == 1 else exact.topk(top_k, dim=1).values[:, -1]
        if bool((apply_softcap(excluded_best, softcap) >= apply_softcap(kth, softcap)).any()):
            return None, ScreenResult(survivors, int(rows.numel()), "softcap ties")
    logits = upper.fill_(float("-inf"))  # reuses the (P, V) buffer
    logits[:, rows] = exact
    return logits, ScreenResult(survivors, int(rows.numel()))
