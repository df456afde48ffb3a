"""Small helpers shared by test modules."""

from __future__ import annotations

from glccl.distributed import free_port

__all__ = ["free_port"]
