"""torch.distributed helpers: rank/world queries and feature gathers. No Ray here: the same code runs under Ray Train,
torchrun or a single process (where every helper is the identity)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (bound to port 0, then released): for a process group's
    ``MASTER_PORT`` or a local service."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the sum over ranks of its slice's gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        world, rank = dist.get_world_size(), dist.get_rank()
        out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather(list(out.chunk(world)), x)
        ctx.rows, ctx.rank = x.shape[0], rank
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() == dist.Backend.NCCL:
            mine = torch.empty((ctx.rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            dist.reduce_scatter_tensor(mine, grad)
            return mine
        grad = grad.clone()  # gloo has no reduce-scatter: one all-reduce, then this rank's slice
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping autograd.

    The backward sums each slice's gradient over ranks. Every rank computes the same global loss L, so rank r receives
    N * dL/dx_r; DDP's gradient averaging then yields exactly dL/dtheta, the gradient of one process on the
    concatenated batch. Requires the same shape on every rank. Each call is one collective forward and one backward.
    The graph orders the backward of two gathers only when one feeds the other (frames -> scores); for side-by-side
    gathers (score and parts, text and video features) ranks may run them in different orders and silently exchange
    the wrong tensors, so gather such tensors in one call (see ``glccl.engine.compute_losses``).
    """
    if not is_dist() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no autograd). Shapes may differ in dim 0 across ranks."""
    if not is_dist() or world_size() == 1:
        return x
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    pad = max(sizes) - x.shape[0]
    if pad:
        x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))], dim=0)
    out = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(out, x.contiguous())
    return torch.cat([o[:s] for o, s in zip(out, sizes)], dim=0)


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Mean of scalar logs across ranks (for logging only)."""
    if not is_dist() or world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    t /= world_size()
    return dict(zip(keys, t.tolist()))


def barrier() -> None:
    if is_dist():
        dist.barrier()
