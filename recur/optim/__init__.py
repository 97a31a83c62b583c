"""Optimizers (AdamW, Muon + AdamW, ELLISAdam), parameter grouping and lr schedules.

Typical use in a trainer::

    optimizer = build_optimizer(model, cfg.optim)
    for step in range(start_step, total_steps):
        set_lr(optimizer, lr_at(step, cfg.optim.schedule, total_steps))
        ...backward...
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
"""

from __future__ import annotations

import torch
from torch import nn

from recur.optim.config import LRScheduleConfig, OptimConfig
from recur.optim.ellisadam import ELLISAdam
from recur.optim.muon import MuonWithAdamW
from recur.optim.param_groups import build_param_groups
from recur.optim.schedules import lr_at

__all__ = [
    "ELLISAdam",
    "LRScheduleConfig",
    "MuonWithAdamW",
    "OptimConfig",
    "build_optimizer",
    "build_param_groups",
    "lr_at",
    "set_lr",
]


def _adamw_kernel(model: nn.Module, fused: bool | None) -> dict[str, bool]:
    """fused=None picks the fused kernel when every parameter is on CUDA, else the foreach kernel."""
    if fused is None:
        fused = all(p.is_cuda for p in model.parameters())
    return {"fused": True} if fused else {"foreach": True}


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build `cfg.name` over `build_param_groups(model, cfg)`, every group at lr = schedule.lr * lr_scale."""
    groups = build_param_groups(model, cfg)
    lr = cfg.schedule.lr
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            groups,
            lr=lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            **_adamw_kernel(model, cfg.fused),
        )
    if cfg.name == "muon":
        return MuonWithAdamW(
            groups,
            lr=lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            momentum=cfg.muon_momentum,
            nesterov=cfg.muon_nesterov,
            ns_steps=cfg.muon_ns_steps,
            adjust_lr=cfg.muon_adjust_lr,
            **_adamw_kernel(model, cfg.fused),
        )
    if cfg.name == "ellisadam":
        return ELLISAdam(
            groups,
            lr=lr,
            betas=cfg.betas,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            grad_norm=cfg.ellis_grad_norm,
            atan=cfg.ellis_atan,
            update_clip=cfg.ellis_update_clip,
            finite_check=cfg.ellis_finite_check,
        )
    raise ValueError(f"optim.name: expected one of adamw|muon|ellisadam, got {cfg.name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to `lr * group["lr_scale"]` (groups without a scale get `lr` unchanged)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
