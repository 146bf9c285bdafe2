"""The target's LM head during verification on CPU (`evospec_hf.ops.verify_head`)."""

import threading

import pytest
import torch
import torch.nn.functional as F

from evospec_hf.models.drafter import drafter_from_target
from evospec_hf.ops import calibration
from evospec_hf.ops.verify_head import VerifyHead, columns_linear, columns_verify_head
from tests.conftest import run_together, tiny_gpt2, tiny_llama


@pytest.fixture(autouse=True)
def private_calibration(tmp_path, monkeypatch):
    """Each test starts from an empty calibration cache of its own, as a fresh machine would."""
    monkeypatch.setenv("EVOSPEC_HF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVOSPEC_HF_CALIBRATION", raising=False)
    calibration.forget_loaded()
    yield
    calibration.forget_loaded()


@pytest.fixture
def recorded(monkeypatch):
    """VerifyHead's two implementations, recording the thread of every call they serve (no timing change)."""
    calls = []

    def linear(x, weight, bias=None):
        calls.append(threading.get_ident())
        return F.linear(x, weight, bias)

    def columns(x, weight, bias=None):
        calls.append(threading.get_ident())
        return columns_linear(x, weight, bias)

    monkeypatch.setattr(VerifyHead, "IMPLEMENTATIONS", (linear, columns))
    return calls


def _untouched(model) -> bool:
    """No shadow on the head, no hook on the model, nothing of evospec_hf's in either's attributes."""
    head = model.get_output_embeddings()
    return (
        "forward" not in vars(head)
        and not model._forward_pre_hooks
        and not model._forward_hooks
        and not any("evospec" in name for name in (*vars(head), *vars(model)))
    )


@pytest.mark.parametrize("shape", [(1, 1, 32), (1, 5, 32), (2, 3, 32), (7, 32)])
@pytest.mark.parametrize("bias", [False, True])
def test_same_values_as_linear(shape, bias):
    torch.manual_seed(0)
    weight, x = torch.randn(96, 32), torch.randn(*shape)
    b = torch.randn(96) if bias else None
    out = columns_linear(x, weight, b)
    assert out.shape == F.linear(x, weight, b).shape and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, b), rtol=0, atol=1e-5)


def test_shadows_the_head_for_the_block_only(recorded):
    model = tiny_llama(seed=0)
    head = model.get_output_embeddings()
    ids = torch.tensor([[3, 4, 5, 6]])
    reference = model(input_ids=ids).logits
    with columns_verify_head(model) as tuned:
        assert isinstance(tuned, VerifyHead) and "forward" in vars(head)
        torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=0, atol=1e-5)
        assert len(recorded) == 1 and 4 in tuned.times  # the target's own forward went through it
    assert _untouched(model)
    with columns_verify_head(model) as again:  # what was measured stays with the head
        assert again is tuned


def test_leaves_other_heads_alone():
    model = tiny_gpt2(seed=0)
    model.lm_head = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(32, 96, bias=False))
    with columns_verify_head(model) as tuned:  # a parametrized head is not a plain nn.Linear
        assert tuned is None


def test_leaves_a_head_whose_forward_someone_else_replaced():
    model = tiny_llama(seed=0)
    head = model.get_output_embeddings()
    head.forward = lambda x: F.linear(x, head.weight)  # e.g. accelerate's offloading hooks
    with columns_verify_head(model) as tuned:
        assert tuned is None
    assert "forward" in vars(head) and not model._forward_pre_hooks


def test_times_both_then_keeps_the_faster(monkeypatch):
    tuned = VerifyHead(trials=2)
    calls = []

    def slow_linear(x, weight, bias=None):
        calls.append("linear")
        clock[0] += 5.0  # "takes" 5 s on the fake clock
        return F.linear(x, weight, bias)

    def fast_columns(x, weight, bias=None):
        calls.append("columns")
        clock[0] += 1.0
        return columns_linear(x, weight, bias)

    clock = [0.0]
    monkeypatch.setattr("evospec_hf.ops.verify_head.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr(VerifyHead, "IMPLEMENTATIONS", (slow_linear, fast_columns))
    weight, x = torch.randn(96, 32), torch.randn(1, 3, 32)
    for _ in range(6):
        torch.testing.assert_close(tuned(x, weight), F.linear(x, weight), rtol=0, atol=1e-5)
    assert calls == ["linear", "columns", "linear", "columns", "columns", "columns"]
    assert tuned.describe() == {3: "W @ H.T"}
    tuned(torch.randn(1, 1, 32), weight)  # one row: plain F.linear, nothing timed
    assert 1 not in tuned.times and len(calls) == 6


def test_decided_choices_are_not_timed_again(recorded):
    tuned = VerifyHead(trials=2, choices={3: "W @ H.T", 5: "unknown name"})
    weight = torch.randn(96, 32)
    tuned(torch.randn(3, 32), weight)
    assert tuned.times == {}  # decided: served without timing
    tuned(torch.randn(5, 32), weight)
    assert 5 in tuned.times  # an unknown name counts as undecided
    assert tuned.describe() == {3: "W @ H.T"}


def test_a_drafter_sharing_the_head_is_not_verified_through_it(recorded):
    target = tiny_llama(seed=0, layers=3)
    drafter = drafter_from_target(target, num_layers=1)
    assert drafter.get_output_embeddings() is target.get_output_embeddings()
    probe = torch.tensor([[1, 2, 3]])  # the drafter head check's probe: 3 rows
    expected = drafter(input_ids=probe).logits
    with columns_verify_head(target) as tuned:
        torch.testing.assert_close(drafter(input_ids=probe).logits, expected, rtol=0, atol=0)
        assert recorded == [] and tuned.times == {}
        target(input_ids=torch.tensor([[4, 5]]))
        assert len(recorded) == 1 and list(tuned.times) == [2]


def test_an_error_inside_the_target_leaves_the_thread_clean(recorded):
    target = tiny_llama(seed=0, layers=3)
    drafter = drafter_from_target(target, num_layers=1)
    with columns_verify_head(target):
        with pytest.raises(IndexError):
            target(input_ids=torch.tensor([[4, 500]]))  # id out of the vocabulary: fails inside the forward
        drafter(input_ids=torch.tensor([[1, 2, 3]]))
        assert recorded == []  # the failed forward did not leave this thread marked as verifying
    assert _untouched(target)


def test_plain_calls_on_another_thread_are_untouched(recorded):
    model = tiny_llama(seed=0)
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    reference = model(input_ids=ids).logits
    inside, plain_done = threading.Event(), threading.Event()
    plain = {}

    def evospec_thread():
        with columns_verify_head(model):
            model(input_ids=ids)
            inside.set()
            assert plain_done.wait(30)  # the plain call runs while this block is open

    def plain_thread():
        assert inside.wait(30)
        plain["ident"] = threading.get_ident()
        plain["logits"] = model(input_ids=ids).logits
        plain["generated"] = model.generate(ids, max_new_tokens=4, do_sample=False)
        plain_done.set()

    threads = [threading.Thread(target=evospec_thread), threading.Thread(target=plain_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(recorded) == 1 and plain["ident"] not in recorded
    torch.testing.assert_close(plain["logits"], reference, rtol=0, atol=0)  # bit-identical: nn.Linear ran
    assert _untouched(model)


def test_blocks_on_several_threads_share_one_shadow(recorded):
    """The shadow is installed by the first block and removed by the last, whatever order they end in."""
    model = tiny_llama(seed=0)
    head = model.get_output_embeddings()
    a_open, b_open, a_closed = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first():
        with columns_verify_head(model) as tuned:
            seen["a"] = tuned
            a_open.set()
            assert b_open.wait(30)
        a_closed.set()

    def second():
        assert a_open.wait(30)
        with columns_verify_head(model) as tuned:
            seen["b"] = tuned
            b_open.set()
            assert a_closed.wait(30)
            seen["still shadowed"] = "forward" in vars(head)
            model(input_ids=torch.tensor([[3, 4, 5]]))  # still verified through the head after A left
            seen["ident"] = threading.get_ident()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert seen["a"] is seen["b"] and seen["still shadowed"]
    assert recorded == [seen["ident"]]
    assert _untouched(model)


def test_concurrent_verification_on_one_target():
    """Four threads verify through one head at once, each with its own KV cache: same logits as without it."""
    model = tiny_llama(seed=0)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 96, (1, 6 + i), generator=gen) for i in range(4)]
    expected = [model(input_ids=p).logits for p in prompts]

    def worker(i):
        with columns_verify_head(model):
            for _ in range(5):
                logits = model(input_ids=prompts[i]).logits
        return logits

    results = run_together([lambda i=i: worker(i) for i in range(4)], timeout=60)
    for i in range(4):
        torch.testing.assert_close(results[i], expected[i], rtol=0, atol=1e-5)
    assert _untouched(model)


def test_a_new_process_reuses_the_decided_choices(monkeypatch):
    """Decided row counts go to the calibration cache when the block ends; a fresh process times nothing again."""
    clock = [0.0]
    monkeypatch.setattr("evospec_hf.ops.verify_head.time.perf_counter", lambda: clock[0])
    model = tiny_llama(seed=0)
    with columns_verify_head(model) as tuned:
        for _ in range(4):
            model(input_ids=torch.tensor([[3, 4, 5]]))
        assert tuned.describe() == {3: "F.linear"}  # ties on the fake clock go to F.linear
    assert calibration.calibration_path().exists()

    calibration.forget_loaded()  # a new process: nothing in memory, a model of the same shapes
    fresh = tiny_llama(seed=1)
    with columns_verify_head(fresh) as tuned:
        assert tuned.describe() == {3: "F.linear"}
        fresh(input_ids=torch.tensor([[3, 4, 5]]))
        assert tuned.times == {}


def test_the_int8_copy_follows_a_replaced_weight_even_at_the_same_address(monkeypatch):
    """A weight replaced by another tensor gets a new int8 copy, even where the new tensor's storage address and
    version equal the old one's (an allocator can reuse a freed weight's memory): a stale copy would screen the new
    head with the old head's bound."""
    from evospec_hf.ops import verify_head
    from evospec_hf.ops.screened_head import Int8Head, integer_product_is_exact

    if not integer_product_is_exact():
        pytest.skip("no exact int8 product on this machine")
    head = torch.nn.Linear(32, 96, bias=False)
    shadow = verify_head._HeadShadow(head)
    first = shadow.int8_head(head)
    assert shadow.int8_head(head) is first  # unchanged weights: the copy is kept
    monkeypatch.setattr(Int8Head, "source_key", staticmethod(lambda weight, bias: "the same address and version"))
    first = shadow.int8_head(head)
    head.weight = torch.nn.Parameter(torch.randn(96, 32))
    second = shadow.int8_head(head)
    assert second is not first and not torch.equal(second.scales, first.scales)
    assert shadow.int8_head(head) is second
