import pytest

from evospec_hf.data import DOMAINS, load_domain_corpus
from evospec_hf.data.corpora import _split_of


def test_split_is_deterministic_and_about_one_in_ten():
    ids = [f"doc-{i}" for i in range(5000)]
    heldout = [i for i in ids if _split_of(i) == "heldout"]
    assert heldout == [i for i in ids if _split_of(i) == "heldout"]
    assert 0.07 < len(heldout) / len(ids) < 0.13


@pytest.mark.parametrize("domain", DOMAINS)
def test_domains_load_with_disjoint_splits(domain):
    train = load_domain_corpus(domain, "train", max_docs=400)
    heldout = load_domain_corpus(domain, "heldout", max_docs=400)
    assert len(train) > 0 and len(heldout) > 0
    assert set(train["domain"]) == {domain}
    assert not set(train["id"]) & set(heldout["id"])
    assert all(t.strip() for t in heldout["text"])


def test_medical_and_general_do_not_overlap():
    medical = set(load_domain_corpus("medical", "train")["id"])
    general = set(load_domain_corpus("general", "train", max_docs=3000)["id"])
    assert medical and not medical & general


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        load_domain_corpus("poetry")
    with pytest.raises(ValueError, match="split"):
        load_domain_corpus("code", "test")
