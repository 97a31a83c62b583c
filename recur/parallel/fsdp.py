"""FSDP2 (`fully_shard`) and activation checkpointing applied from outside the model (torchtitan style).

Units: every decoder block of the model's `block_lists()` (baseline: `layers`; looped models: `prelude`,
`coda`, `core`; thought-stream models: `prelude`, `coda`) is one FSDP unit; the root unit holds
embeddings, adapter, thought stream, norms and head.

The recurrent core is applied r = n + k times per step (n iterations under no_grad, then k with grad).
FSDP2 unshards a unit in the pre-forward hook of every call, so with the default
reshard_after_forward=True each core block would be all-gathered r times in forward (and again per
iteration in backward). Blocks of a looped list (the core) therefore keep their gathered parameters from the first iteration
until the end of the forward (`reshard_after_forward=False`): one all-gather per step instead of r, at
the cost of holding the core's full parameters during the loop (a few blocks, small next to the
activations of r iterations). Backward still visits a core block k times; FSDP2 reduce-scatters after
each visit and accumulates the sharded gradient, which is exact (sum of the k partial gradients).
`--dist.reshard_core` restores per-iteration resharding when memory is tighter than bandwidth.
No-grad iterations register no backward hooks, so they cost forward compute and nothing else.

Activation checkpointing wraps each Block with the composable `checkpoint` (module names unchanged,
so checkpoints are identical with and without it). Only iterations that build a graph store anything.
`--dist.ac_policy selective` keeps the attention kernels' outputs and recomputes only the rest of the block
(projections, MLP, norms, rotary): at 16k context attention is the quadratic, costliest part of the
recomputation, while what it saves per block (output and log-sum-exp) is one activation's worth of memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import torch
from torch.distributed._composable import checkpoint
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from recur.models.lm import DecoderLM
from recur.parallel.config import AC_POLICIES

_aten = torch.ops.aten
# The fused attention kernels SDPA dispatches to; their outputs are what `selective` keeps.
ATTENTION_OPS = {
    _aten._scaled_dot_product_flash_attention.default,
    _aten._scaled_dot_product_efficient_attention.default,
    _aten._scaled_dot_product_cudnn_attention.default,
    _aten._scaled_dot_product_flash_attention_for_cpu.default,
}
if hasattr(torch.ops.higher_order, "flex_attention"):  # eager flex only: compiled flex is opaque to the policy
    ATTENTION_OPS.add(torch.ops.higher_order.flex_attention)


def _keep_attention(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in ATTENTION_OPS else CheckpointPolicy.PREFER_RECOMPUTE


@contextmanager
def _without_autocast_cache(inner: AbstractContextManager) -> Iterator[None]:
    # Autocast casts a weight once per autocast region and reuses the copy; a block recomputed in backward
    # runs outside that region and casts again, so selective checkpointing would count casts the forward
    # never ran (and fail). Casting at every use in the forward and the recompute keeps the counts equal.
    with ExitStack() as stack:
        for device_type in ("cuda", "cpu"):
            if torch.is_autocast_enabled(device_type):
                dtype = torch.get_autocast_dtype(device_type)
                stack.enter_context(torch.autocast(device_type, dtype=dtype, cache_enabled=False))
        stack.enter_context(inner)
        yield


def _selective_contexts() -> tuple[AbstractContextManager, AbstractContextManager]:
    forward, recompute = create_selective_checkpoint_contexts(_keep_attention)
    return _without_autocast_cache(forward), _without_autocast_cache(recompute)


def apply_activation_checkpointing(model: DecoderLM, policy: str = "full") -> None:
    """Checkpoint every decoder block of the model's block lists in place: `full` recomputes the whole block
    in backward, `selective` all of it but attention."""
    if policy not in AC_POLICIES:
        raise ValueError(f"--dist.ac_policy: unknown policy '{policy}'; expected one of {', '.join(AC_POLICIES)}")
    extra = {"context_fn": _selective_contexts} if policy == "selective" else {}
    for entry in model.block_lists():
        for block in entry.blocks:
            checkpoint(block, **extra)


def apply_fsdp(
    model: DecoderLM, device: torch.device, cpu_offload: bool = False, reshard_core: bool = False
) -> DecoderLM:
    """Shard `model` in place over the default process group; returns it (now an FSDPModule)."""
    # bf16 parameters and compute with fp32 gradient reduction on GPU; CPU runs stay in fp32.
    mp_policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if device.type == "cuda"
        else MixedPrecisionPolicy()
    )
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    for entry in model.block_lists():
        keep_gathered = entry.looped and not reshard_core
        for i, block in enumerate(entry.blocks):
            # The last block before the head is followed by the root unit, which needs no re-gather either.
            last = i == len(entry.blocks) - 1 and entry.before_head
            fully_shard(
                block, mp_policy=mp_policy, offload_policy=offload, reshard_after_forward=not (keep_gathered or last)
            )
    fully_shard(model, mp_policy=mp_policy, offload_policy=offload, reshard_after_forward=False)
    return model
