"""Kernels of evospec_hf. Each Triton kernel has its plain-torch reference beside it."""

from .softcap import logit_transform
from .sparse_lm_head import packed_lm_head, resolve_head_backend, sparse_lm_head_reference

__all__ = ["logit_transform", "packed_lm_head", "resolve_head_backend", "sparse_lm_head_reference"]
