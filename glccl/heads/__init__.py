"""Similarity heads: the head contract and registry (``base``), the GLCCL head (exact fast form + naive reference) and
the baselines (X-CLIP, X-Pool, TC-MGC, GLSCL, CLIP4Clip meanP / seqTransf), each in its own module and listed in
``base.BUILTIN_HEADS``."""

from .base import (
                   BUILTIN_HEADS,
                   Hyperparameter,
                   SimilarityHead,
                   build_head,
                   check_head_args,
                   get_head_class,
                   list_heads,
                   register_head,
)
from .glccl import GLCCLHead, glccl_flops
from .meanp import MeanPHead
from .reference import glccl_scores_naive, glccl_scores_naive_chunked, naive_glccl_flops

__all__ = [
    "BUILTIN_HEADS", "Hyperparameter", "SimilarityHead", "build_head", "check_head_args", "get_head_class",
    "list_heads", "register_head",
    "GLCCLHead", "MeanPHead", "glccl_flops", "glccl_scores_naive", "glccl_scores_naive_chunked", "naive_glccl_flops",
]
