"""The int8 screen of an LM head (`evospec_hf.ops.screened_head`): the argmax is the full head's, and every row it
excludes is provably below the floor, on heads and hidden states built to stress the bound."""

import pytest
import torch
import torch.nn.functional as F
from transformers import TopKLogitsWarper

from evospec_hf.ops import screened_head
from evospec_hf.ops.screened_head import (
    Int8Head, PackedRows, integer_product_is_exact, quantize_positions, screened_logits,
)  # fmt: skip

pytestmark = pytest.mark.skipif(not integer_product_is_exact(), reason="no exact int8 product on this machine")


def check_screen(h, weight, bias=None, softcap=None):
    """Screens `h` and checks the contract against the full head: the argmax at every position, the exact values
    of the survivors, -inf elsewhere, and every excluded row below the best. Returns the `ScreenResult`."""
    head = Int8Head.pack(weight, bias)
    logits, result = screened_logits(h, head, weight, bias, max_survivors=weight.shape[0], softcap=softcap)
    assert result.fallback is None, result.fallback
    full = F.linear(h.double(), weight.double(), None if bias is None else bias.double())
    assert torch.equal(logits.argmax(dim=1), full.argmax(dim=1))
    kept = torch.isfinite(logits)
    torch.testing.assert_close(logits[kept].double(), full[kept], rtol=1e-5, atol=1e-4)
    best = full.max(dim=1, keepdim=True).values
    assert bool((full[~kept] < best.expand_as(full)[~kept]).all())  # nothing excluded could be the argmax
    # every position holds the exact values of the union of the positions' survivors
    assert kept.sum(dim=1).tolist() == [result.rescored] * h.shape[0] and max(result.survivors) <= result.rescored
    return result


def near_ties(rows: int, d: int, seed: int, spread: float) -> torch.Tensor:
    """A head whose rows are all close to one direction: logits differ by about the quantization error, so the
    int8 order and the exact order often disagree and the bound decides what survives."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    return base + spread * torch.randn(rows, d, generator=g)


@pytest.mark.parametrize("positions", [1, 3, 9])
@pytest.mark.parametrize("d", [32, 640, 77], ids=["d32", "d640", "d77-odd"])
def test_argmax_is_the_full_heads_on_random_heads(positions, d):
    g = torch.Generator().manual_seed(d + positions)
    weight = torch.randn(3000, d, generator=g) * 0.05
    h = torch.randn(positions, d, generator=g) * 4
    result = check_screen(h, weight)
    assert max(result.survivors) < 3000 // 10  # it screens: most rows are excluded


@pytest.mark.parametrize("seed", range(6))
def test_near_ties_keep_the_exact_argmax(seed):
    weight = near_ties(4000, 64, seed, spread=2e-3)
    h = torch.randn(8, 64, generator=torch.Generator().manual_seed(100 + seed))
    h = h + 3 * weight.mean(dim=0)  # aligned with the rows: the logits are large and nearly equal
    result = check_screen(h, weight)
    assert max(result.survivors) > 1  # the bound, not the int8 order, decided these


def aligned_error_case(d: int = 64, seed: int = 0):
    """(h, weight) where the bound is nearly tight and decides the argmax: row 0's quantization error points along h
    (every entry 0.49 of a step off the int8 grid, towards h's sign), so its int8 logit understates it by almost
    exactly ‖w − ŵ‖·‖h‖; row 1 sits on the grid, 30 steps higher in int8 but 0.87 of a step lower exactly. h is ±1
    (quantized exactly). The other rows are small."""
    g = torch.Generator().manual_seed(seed)
    step = 1.0 / 127
    h = torch.where(torch.rand(1, d, generator=g) < 0.5, -1.0, 1.0)
    grid = torch.randint(-90, 91, (d,), generator=g).float()
    grid[0] = 127.0  # pins the row's int8 scale to `step`
    offset = 0.49 * step * h[0]
    offset[0] = 0.0
    decoy = grid.clone()
    decoy[1:31] += h[0, 1:31]  # 30 steps more along h
    weight = torch.randn(300, d, generator=g) * 0.002
    weight[0] = grid * step + offset
    weight[1] = decoy * step
    return h, weight


def test_a_nearly_tight_bound_keeps_the_argmax():
    h, weight = aligned_error_case()
    scale = weight.abs().amax(dim=1, keepdim=True) / 127
    int8_logits = h @ (torch.round(weight / scale) * scale).T
    assert int((h.double() @ weight.double().T).argmax()) == 0 and int(int8_logits.argmax()) == 1
    result = check_screen(h, weight)
    assert result.survivors == [2]


def test_halving_the_bound_misses_the_argmax():
    """With every factor of the bound halved, the row whose error points along h is excluded: the case above would
    catch a bound that is too small."""
    h, weight = aligned_error_case()
    head = Int8Head.pack(weight)
    head.weight_error, head.weight_norm = head.weight_error / 2, head.weight_norm / 2
    logits, _ = screened_logits(h, head, weight, max_survivors=300)
    assert int(logits.argmax()) == 1  # the decoy: wrong


def test_a_row_with_one_huge_weight():
    """One huge entry makes the row's int8 scale coarse (its other entries quantize to zero): a large error that
    its own bound must cover, whether or not the row is the argmax."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(2000, 64, generator=g) * 0.05
    weight[17, 5] = 400.0
    weight[18, 5] = -400.0
    h = torch.randn(6, 64, generator=g)
    h[:3, 5] = 0.0  # where the huge entry does not count, row 17's other entries decide
    h[3:, 5] = torch.tensor([1e-3, -1e-3, 0.0])
    result = check_screen(h, weight)
    assert result.survivors[0] >= 1


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_hidden_states_of_tiny_and_huge_norm(scale):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(2000, 48, generator=g) * 0.05
    check_screen(torch.randn(4, 48, generator=g) * scale, weight)


def test_a_bias_is_part_of_each_rows_logit():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(2000, 48, generator=g) * 0.05
    bias = torch.randn(2000, generator=g) * 3
    h = torch.randn(5, 48, generator=g)
    check_screen(h, weight, bias)
    # the bias moves the argmax away from the weights' own
    assert not torch.equal((h @ weight.T).argmax(dim=1), (h @ weight.T + bias).argmax(dim=1))


def test_zero_rows_and_positions():
    weight = torch.randn(500, 32, generator=torch.Generator().manual_seed(3))
    weight[:10] = 0.0
    h = torch.randn(3, 32, generator=torch.Generator().manual_seed(4))
    h[1] = 0.0  # every logit 0: the first row wins, as in the full head
    check_screen(h, weight)


def test_non_finite_hidden_states_fall_back():
    weight = torch.randn(500, 32)
    h = torch.randn(2, 32)
    h[1, 3] = float("nan")
    logits, result = screened_logits(h, Int8Head.pack(weight), weight)
    assert logits is None and result.fallback == "non-finite hidden state"


def test_too_many_survivors_fall_back():
    weight = near_ties(2000, 64, 0, spread=1e-4)  # rows nearly equal: most of them survive
    h = torch.randn(2, 64) + 3 * weight.mean(dim=0)
    logits, result = screened_logits(h, Int8Head.pack(weight), weight, max_survivors=10)
    assert logits is None and result.fallback == "too many survivors" and result.rescored > 10


def test_a_saturating_softcap_falls_back():
    """With a tiny cap every large logit maps to the cap itself: excluded rows would tie with the best after the
    transform, and the full head's first-index tie-break cannot be reproduced, so the full head runs."""
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(1000, 32, generator=g)
    h = torch.randn(2, 32, generator=g) * 10
    logits, result = screened_logits(h, Int8Head.pack(weight), weight, softcap=1e-3)
    assert logits is None and result.fallback == "softcap ties"
    check_screen(h / 100, weight, softcap=30.0)  # a softcap far from saturation keeps the screen


def test_the_residual_row_tightens_the_activation():
    h = torch.randn(4, 640, generator=torch.Generator().manual_seed(6))
    q, scales, norm, miss = quantize_positions(h)
    assert q.shape == (8, 640) and bool((q.abs() <= 63).all()) and torch.equal(q, q.round())
    rebuilt = q[:4] * scales[:4, None] + q[4:] * scales[4:, None]
    torch.testing.assert_close(miss, (h.double() - rebuilt.double()).norm(dim=1))
    assert bool((miss < norm / (63 * 63) * 8).all())  # about 1/63 of one row's error


def test_the_copy_notices_changed_weights():
    weight = torch.randn(300, 32)
    head = Int8Head.pack(weight)
    assert head.matches(weight, None)
    with torch.no_grad():
        weight.mul_(2)
    assert not head.matches(weight, None)


def test_no_copy_where_it_cannot_be_exact(monkeypatch):
    assert Int8Head.pack(torch.randn(100, 32).half()) is None
    bad = torch.randn(100, 32)
    bad[3, 3] = float("inf")
    assert Int8Head.pack(bad) is None
    monkeypatch.setattr(screened_head, "_probe_result", False)  # a machine whose int8 sums are not exact
    assert Int8Head.pack(torch.randn(100, 32)) is None


def test_the_probe_sees_a_saturating_product(monkeypatch):
    """The machine check fails when the integer product saturates: simulated here by an activation range that
    overflows 16-bit pair sums on CPUs without VNNI (on CPUs with VNNI, by a corrupted product)."""
    real = screened_head.integer_rows_product

    def saturating(rows, packed):
        out = real(rows, packed)
        return out.clamp(-2**15, 2**15)

    monkeypatch.setattr(screened_head, "integer_rows_product", saturating)
    assert screened_head._probe() is False


# -- top k: every row that can be among a position's k best survives with its exact logit (top-k sampling) -----------


def check_top_k(h, weight, k, bias=None, softcap=None):
    """Screens `h` keeping `k` rows per position and checks that a top-k filter keeps the same rows, with the same
    values, from the screened logits as from the full head's. Returns the `ScreenResult`."""
    head = Int8Head.pack(weight, bias)
    logits, result = screened_logits(h, head, weight, bias, max_survivors=weight.shape[0], softcap=softcap, top_k=k)
    assert result.fallback is None, result.fallback
    full = F.linear(h, weight, bias)
    if softcap is not None:
        logits, full = softcap * torch.tanh(logits / softcap), softcap * torch.tanh(full / softcap)
    warper = TopKLogitsWarper(k)
    mine, theirs = warper(None, logits), warper(None, full)
    assert torch.equal(torch.isfinite(mine), torch.isfinite(theirs))  # the same rows kept, ties included
    kept = torch.isfinite(theirs)
    torch.testing.assert_close(mine[kept], theirs[kept], rtol=1e-5, atol=1e-5)
    assert min(result.survivors) >= k
    return result


@pytest.mark.parametrize("k", [2, 20, 64])
@pytest.mark.parametrize("positions", [1, 5])
def test_top_k_rows_are_the_full_heads(k, positions):
    g = torch.Generator().manual_seed(k + positions)
    weight = torch.randn(3000, 96, generator=g) * 0.05
    h = torch.randn(positions, 96, generator=g) * 4
    result = check_top_k(h, weight, k)
    assert max(result.survivors) < 3000 // 3  # it still screens


@pytest.mark.parametrize("seed", range(4))
def test_top_k_near_ties(seed):
    weight = near_ties(4000, 64, seed, spread=2e-3)
    h = torch.randn(6, 64, generator=torch.Generator().manual_seed(200 + seed)) + 3 * weight.mean(dim=0)
    result = check_top_k(h, weight, k=16)
    assert max(result.survivors) > 16  # the bound, not the int8 order, decided these


def test_rows_tied_at_the_kth_value_all_survive():
    """Rows equal to the k-th best row tie with it: every copy survives the screen with its exact logit, and every
    row a top-k filter keeps from the full head is among the survivors.

    Which copies a top-k filter keeps at such a tie is decided by the last bit of each copy's fp32 sum, and that
    depends on the matmul kernel's blocking: on AVX-512 CPUs the same row can come out one unit in the last place
    apart in a product over the survivors and in one over the whole head. So the kept sets are compared only up to
    that rounding (the same as verifying several positions in one forward; docs/concepts/exactness.md)."""
    g = torch.Generator().manual_seed(7)
    weight = torch.randn(2000, 48, generator=g) * 0.05
    h = torch.randn(1, 48, generator=g)
    order = (h @ weight.T)[0].argsort(descending=True)
    weight[order[10:14]] = weight[order[4]].clone()  # the 5th best now appears five times: ranks 5 to 9 tie
    copies = torch.cat([order[4:5], order[10:14]])
    logits, result = screened_logits(h, Int8Head.pack(weight), weight, max_survivors=2000, top_k=6)
    assert result.fallback is None
    full = F.linear(h, weight)
    assert bool(logits[0, copies].isfinite().all())  # no copy is dropped
    sum_order = 2 * 1.01 * 48 * 2**-24 * weight[copies].norm(dim=1) * h.norm()  # the screen's own allowance
    assert bool(((logits[0, copies] - full[0, copies]).abs() <= sum_order).all())
    kept = TopKLogitsWarper(6)(None, full).isfinite()
    assert int(kept.sum()) >= 6 and bool(logits[kept].isfinite().all())
    assert int(TopKLogitsWarper(6)(None, logits).isfinite().sum()) >= 6


def test_top_k_with_a_bias_and_a_softcap():
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(2000, 48, generator=g) * 0.05
    bias = torch.randn(2000, generator=g)
    check_top_k(torch.randn(4, 48, generator=g), weight, k=32, bias=bias, softcap=30.0)


def two_decoys_case(d: int = 64):
    """`aligned_error_case` with two decoys: rows 1 and 2 are both higher than row 0 in int8 and both lower exactly.
    For k = 2 the floor comes from the two decoys, and only the bound keeps row 0, the true best."""
    h, weight = aligned_error_case(d)
    weight = torch.cat([weight[:2], weight[1:2], weight[2:]])
    return h, weight


def test_top_k_with_the_best_row_last_in_int8():
    h, weight = two_decoys_case()
    check_top_k(h, weight, k=2)


def test_halving_the_bound_misses_a_top_k_row():
    h, weight = two_decoys_case()
    head = Int8Head.pack(weight)
    head.weight_error, head.weight_norm = head.weight_error / 2, head.weight_norm / 2
    logits, _ = screened_logits(h, head, weight, max_survivors=weight.shape[0], top_k=2)
    assert not bool(torch.isfinite(logits[0, 0]))  # the true best row, screened out


def test_top_k_above_the_head_keeps_every_row():
    weight = torch.randn(100, 32)
    logits, result = screened_logits(torch.randn(2, 32), Int8Head.pack(weight), weight, top_k=101)
    assert bool(torch.isfinite(logits).all()) and result.survivors == [100, 100]
    with pytest.raises(ValueError, match="top_k"):
        screened_logits(torch.randn(1, 32), Int8Head.pack(weight), weight, top_k=0)


@pytest.mark.parametrize(
    ("rows", "width", "fold"),
    [(1003, 640, 4), (1000, 77, 6), (999, 1024, 1), (500, 900, 1), (257, 32, 16), (64, 768, 2)],
)
def test_packed_rows_return_the_exact_integer_sums(rows, width, fold):
    """The columns past the last multiple of 512 are folded several rows to one: the sums stay exact, for head row
    counts that do not divide by the fold, and at the extremes of both ranges."""
    g = torch.Generator().manual_seed(rows + width)
    q = torch.randint(-128, 128, (rows, width), generator=g, dtype=torch.int8)
    q[0], q[1] = -128, 127
    x = torch.randint(-63, 64, (5, width), generator=g).float()
    x[0], x[1] = 63.0, -63.0
    packed = PackedRows(q)
    assert packed.fold == fold
    assert torch.equal(packed.product(x).double(), x.double() @ q.double().T)
