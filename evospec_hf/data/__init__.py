"""Corpora on the machine, by domain, with a fixed train / held-out split."""

from .corpora import DOMAINS, load_domain_corpus, token_chunks

__all__ = ["DOMAINS", "load_domain_corpus", "token_chunks"]
