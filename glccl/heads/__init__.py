"""Similarity heads: registry, the GLCCL head (exact fast form + naive reference) and the MeanP baseline."""

from .base import SimilarityHead, build_head, list_heads, register_head
from .glccl import GLCCLHead, glccl_flops
from .glscl import GLSCLHead, glscl_flops  # noqa: F401  (registers "glscl")
from .meanp import MeanPHead
from .reference import glccl_scores_naive, glccl_scores_naive_chunked, naive_glccl_flops
from .seqtransf import SeqTransfHead, seqtransf_flops  # noqa: F401  (registers "seqtransf")
from .tcmgc import TCMGCHead, tcmgc_flops  # noqa: F401  (registers "tcmgc")
from .xclip import XCLIPHead, xclip_flops  # noqa: F401  (registers "xclip")
from .xpool import XPoolHead, xpool_flops  # noqa: F401  (registers "xpool")

__all__ = [
    "SimilarityHead", "build_head", "list_heads", "register_head",
    "GLCCLHead", "MeanPHead", "glccl_flops", "glccl_scores_naive", "glccl_scores_naive_chunked", "naive_glccl_flops",
]
