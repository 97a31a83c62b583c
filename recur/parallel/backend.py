"""One training backend (none | ddp | fsdp | deepspeed) behind the few verbs the training loop needs.

    backend = build_backend(cfg, model, env, accumulation_steps, micro_batch_size, make_optimizer)
    with backend.micro_batch(last_micro_batch):    # per micro-batch, around its forward and backward
        out = backend.model(...)                   # the callable (wrapped) model
        backend.backward(loss, last_micro_batch)
    grad_norm = backend.clip_and_step(max_norm)    # or backend.skip_step() on a non-finite loss
    backend.zero_grad()
    backend.checkpoint_state()                     # what Checkpointer saves/loads for this backend

Gradient scaling contract: `backward` receives a loss already weighted so that the *sum* over a rank's
micro-batches, *averaged* over ranks, is the global-batch loss. Every backend averages over ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.distributed as dist
from torch import nn

from recur.checkpoint import DCPState
from recur.config import TrainConfig
from recur.parallel.env import DistEnv


def resolve_backend(name: str, world_size: int) -> str:
    """auto = fsdp on several ranks, none on one; an explicit choice is honoured even on one rank."""
    if name == "auto":
        return "fsdp" if world_size > 1 else "none"
    return name


class Backend:
    """Single process (also the base: plain autograd, torch clipping, optimizer.step)."""

    name = "none"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv):
        self.model, self.raw, self.optimizer, self.env = model, model, optimizer, env

    def micro_batch(self, last_micro_batch: bool) -> AbstractContextManager:
        """Context for one micro-batch's forward and backward."""
        return nullcontext()

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        loss.backward()

    def clip_and_step(self, max_norm: float | None) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm or float("inf"))
        self.optimizer.step()
        return _scalar(norm)

    def skip_step(self) -> None:
        """Drop this step's gradients (non-finite loss on some rank): no parameter or optimizer change."""

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def checkpoint_state(self):
        return DCPState(self.model, self.optimizer)


class DDPBackend(Backend):
    """torch DDP: gradients are all-reduced (averaged) during the last micro-batch's backward."""

    name = "ddp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv):
        from recur.parallel.ddp import wrap_ddp

        super().__init__(wrap_ddp(model, env.device), optimizer, env)
        self.raw = model  # evaluation, FLOP counts and checkpoints go to the model itself

    def micro_batch(self, last_micro_batch: bool) -> AbstractContextManager:
        # Accumulate the earlier micro-batches' gradients locally; no_sync must cover their forward too.
        return nullcontext() if last_micro_batch else self.model.no_sync()

    def checkpoint_state(self):
        return DCPState(self.raw, self.optimizer)  # the model's own names, without DDP's "module." prefix


class FSDPBackend(Backend):
    name = "fsdp"

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        # Accumulate unsharded gradients locally; reduce-scatter only in the last micro-batch's backward.
        self.model.set_requires_gradient_sync(last_micro_batch)
        loss.backward()


class DeepSpeedBackend(Backend):
    """The engine does reduction, clipping (config's gradient_clipping = --optim.grad_clip) and the step."""

    name = "deepspeed"

    def __init__(self, engine, optimizer: torch.optim.Optimizer, raw: nn.Module, env: DistEnv):
        super().__init__(engine, optimizer, env)
        self.raw = raw

    def backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        self.model.backward(loss, scale_wrt_gas=False)  # our loss weights already divide by the micro-batches
        if not last_micro_batch:
            self.model.step()  # DeepSpeed counts micro-steps; no update before the accumulation boundary

    def clip_and_step(self, max_norm: float | None) -> float:
        self.model.step()
        norm = self.model.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def skip_step(self) -> None:
        # ZeRO's own overflow check sees the non-finite gradients and skips the update and clears them;
        # verify it did, because a silent NaN update would poison every later step.
        skipped = self.model.skipped_steps
        self.model.step()
        if self.model.skipped_steps != skipped + 1:
            raise RuntimeError(
                "DeepSpeed applied an update with non-finite gradients; enable "
                "bf16.check_grad_overflow in --dist.deepspeed_config or use --dist.nan_policy stop"
            )

    def zero_grad(self) -> None:
        pass  # the engine clears gradients at the accumulation boundary

    def checkpoint_state(self):
        from recur.parallel.deepspeed import DeepSpeedState

        return DeepSpeedState(self.model)


def build_backend(
    cfg: TrainConfig,
    model: nn.Module,
    env: DistEnv,
    accumulation_steps: int,
    micro_batch_size: int,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> Backend:
    """Wrap `model` for the configured backend, then build its optimizer over the parameters it will
    actually train (fully_shard replaces parameters by sharded DTensors, so the order matters)."""
    name = resolve_backend(cfg.dist.backend, env.world_size)
    if cfg.dist.activation_checkpointing:
        if name == "deepspeed":
            raise ValueError(
                "--dist.activation_checkpointing is applied by the fsdp/ddp/none backends; with "
                "deepspeed use its own activation_checkpointing config"
            )
        from recur.parallel.fsdp import apply_activation_checkpointing

        apply_activation_checkpointing(model, cfg.dist.ac_policy)
    if cfg.compile:  # per block, after checkpoint wrapping and before sharding: r changes never recompile
        from recur.parallel.compile import compile_model

        # One device and no per-block hooks: a model of fixed depth compiles its training step whole.
        compile_model(model, whole=name == "none" and not cfg.dist.activation_checkpointing)
    if cfg.dist.cpu_offload and name != "fsdp":
        raise ValueError(
            f"--dist.cpu_offload needs --dist.backend fsdp (got {name}); for deepspeed set "
            "zero_optimization.offload_optimizer in its config"
        )
    if cfg.dist.cpu_offload and env.device.type != "cuda":
        raise ValueError(f"--dist.cpu_offload moves GPU state to host memory; this run is on {env.device}")
    if name == "none":
        return Backend(model, make_optimizer(model), env)
    if name == "ddp":
        return DDPBackend(model, make_optimizer(model), env)
    if name == "fsdp":
        from recur.parallel.fsdp import apply_fsdp

        apply_fsdp(model, env.device, cfg.dist.cpu_offload, cfg.dist.reshard_core)
        return FSDPBackend(model, make_optimizer(model), env)
    from recur.parallel.deepspeed import build_deepspeed_config, initialize_deepspeed

    ds_config = build_deepspeed_config(
        cfg.dist.deepspeed_config,
        global_batch_size=cfg.data.global_batch_size,
        micro_batch_size=micro_batch_size,
        accumulation_steps=accumulation_steps,
        grad_clip=cfg.optim.grad_clip,
        bf16=cfg.uses_bf16(env.device.type),
    )
    optimizer = make_optimizer(model)
    engine, _ = initialize_deepspeed(model, optimizer, ds_config)
    return DeepSpeedBackend(engine, optimizer, model, env)


def _scalar(norm: torch.Tensor) -> float:
    if hasattr(norm, "full_tensor"):  # DTensor (FSDP): the norm is sharded as a partial reduction
        norm = norm.full_tensor()
    return float(norm)


def all_reduce_sum(values: torch.Tensor) -> list[float]:
    """Element-wise sum over ranks of a small vector in one collective (identity in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values.tolist()
