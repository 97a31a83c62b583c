"""Data parallelism with replicated parameters: torch's `DistributedDataParallel`, configured for our models.

Looped models reuse their core blocks r times per step with r drawn per step. That is no problem for DDP:
its reducer hooks the parameters' gradient accumulators, which autograd runs once per backward with the
sum over all uses. Two gloo ranks match one process to ~5e-7 per step with sampled (n, k) draws, keyed
noise, no_sync accumulation (tests/test_distributed_runs.py) and per-block activation checkpointing, which
is the non-reentrant kind: a reentrant one would run a second backward per block and fire the hooks twice.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def wrap_ddp(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """Wrap `model` (rank 0's parameters are broadcast to every rank here) for data-parallel training."""
    return DistributedDataParallel(
        model,
        device_ids=[device] if device.type == "cuda" else None,
        # The set of parameters that get a gradient changes from step to step, and between ranks: the
        # thought variants' learned initial thoughts feed only the first iteration, which runs without a
        # graph whenever n > 0, and ACT can halt before its thought core runs at all. So DDP must look for
        # unused parameters every step, and static_graph (one recorded set for the whole run) would be wrong.
        find_unused_parameters=True,
        # The only buffers (RoPE frequencies, the eval-mode initial state) are constants, identical on
        # every rank after the broadcast at construction: no need to re-broadcast them every forward.
        broadcast_buffers=False,
    )
