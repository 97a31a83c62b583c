"""Data parallelism for small models: replicated parameters, one bucketed gradient all-reduce per step.

Why not `torch.nn.parallel.DistributedDataParallel`: its reducer fires once per parameter use, and the
looped model uses each core parameter k times per step with k drawn per step. `static_graph=True`
records the hook count of the first step and would all-reduce a partial gradient (or never) when k
changes; `find_unused_parameters=True` does not allow a parameter to be ready twice. Reducing after the
whole backward is exact for any graph, needs no `no_sync` for gradient accumulation (it runs once, after
the last micro-batch), and for the small models this backend is meant for the lost overlap is minor.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

BUCKET_BYTES = 32 * 2**20


@torch.no_grad()
def broadcast_parameters(model: nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def allreduce_gradients(model: nn.Module, bucket_bytes: int = BUCKET_BYTES) -> None:
    """Average gradients over ranks in flat buckets (parameters without a gradient count as zero)."""
    world = dist.get_world_size()
    params = [p for p in dict.fromkeys(model.parameters()) if p.requires_grad]
    for p in params:
        if p.grad is None:  # identical decision on every rank would be needed to skip; zeros are always safe
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for p in params + [None]:
        if p is not None and (not bucket or (p.grad.dtype == bucket[0].dtype and size < bucket_bytes)):
            bucket.append(p.grad)
            size += p.grad.numel() * p.grad.element_size()
            continue
        flat = _flatten_dense_tensors(bucket)
        dist.all_reduce(flat)  # SUM: gloo has no AVG
        flat /= world
        for grad, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
            grad.copy_(reduced)
        if p is not None:
            bucket, size = [p.grad], p.grad.numel() * p.grad.element_size()
