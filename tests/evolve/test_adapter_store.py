"""`AdapterStore` on its own: the weights it puts into the drafter are exactly the ones asked for, the drafter's own
come back exactly, and a saved adapter reads back exactly."""

import pytest
import torch

from evospec_hf.evolve.adapter_store import AdapterStore, lora_parameters, read_adapter, trained_subset, with_lora

from ..conftest import tiny_llama


def in_drafter(store) -> dict:
    return {name: p.detach().clone() for name, p in lora_parameters(store.drafter).items()}


def random_like(weights: dict, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(t.shape, generator=generator) for name, t in weights.items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def store():
    return AdapterStore(with_lora(tiny_llama(seed=0), rank=4))


def test_a_fresh_adapter_starts_as_the_drafters_own_weights(store):
    assert store.initial and same(store.initial, in_drafter(store)) and same(store.weights, store.initial)
    assert with_lora(store.drafter, rank=8) is store.drafter  # a drafter with an adapter keeps it


def test_put_in_and_take_out_restore_exactly(store):
    own, session = in_drafter(store), random_like(store.initial, seed=1)
    trained = trained_subset(lora_parameters(store.drafter), last_layers=1)
    store.put_in(session, trained)
    assert store.is_in and same(in_drafter(store), session)
    assert {name for name, p in lora_parameters(store.drafter).items() if p.requires_grad} == set(trained)
    with pytest.raises(RuntimeError, match="already in"):
        store.put_in(session)
    store.take_out(keep=False)
    assert not store.is_in and same(in_drafter(store), own) and same(store.weights, store.initial)
    assert not any(p.requires_grad for p in lora_parameters(store.drafter).values())
    store.take_out(keep=True)  # nothing is in: nothing happens
    assert same(store.weights, store.initial)


def test_take_out_keeps_what_was_learned_while_it_was_in(store):
    own, learned = in_drafter(store), random_like(store.initial, seed=2)
    store.put_in(store.weights)
    with torch.no_grad():  # stands for the updates of a call
        for name, p in lora_parameters(store.drafter).items():
            p.copy_(learned[name])
    store.take_out(keep=True)
    assert same(store.weights, learned) and same(in_drafter(store), own)
    store.reset()
    assert same(store.weights, store.initial)


def test_swapped_in_gives_the_drafter_its_weights_back_even_after_an_error(store):
    own, other = in_drafter(store), random_like(store.initial, seed=3)
    with pytest.raises(KeyError):
        with store.swapped_in(other):
            assert same(in_drafter(store), other)
            raise KeyError("inside")
    assert same(in_drafter(store), own)


def test_a_saved_adapter_reads_back_exactly(store, tmp_path):
    store.weights = random_like(store.initial, seed=4)
    own = in_drafter(store)
    store.save(tmp_path / "adapter")
    assert same(in_drafter(store), own)  # saving does not leave the session's adapter in the drafter
    other = AdapterStore(with_lora(tiny_llama(seed=5), rank=4))
    other.load(read_adapter(tmp_path / "adapter"), tmp_path / "adapter")
    assert same(other.weights, store.weights)
    assert not same(in_drafter(other), store.weights)  # loading sets the adapter, not the drafter's own weights


def test_an_adapter_of_another_shape_is_refused(store, tmp_path):
    AdapterStore(with_lora(tiny_llama(seed=0, layers=1), rank=4)).save(tmp_path / "small")
    with pytest.raises(ValueError, match="does not fit"):
        store.load(read_adapter(tmp_path / "small"), tmp_path / "small")


def test_trained_subset_takes_the_last_layers():
    params = {f"model.layers.{i}.q.lora_A.weight": i for i in range(3)}
    assert list(trained_subset(params, 2).values()) == [1, 2] and trained_subset(params, None) is params
    with pytest.raises(ValueError, match="trainable_layers"):
        trained_subset({"lm_head.lora_A.weight": 0}, 1)
