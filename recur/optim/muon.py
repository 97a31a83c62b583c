"""Muon (momentum + Newton-Schulz orthogonalisation) for hidden matrices, AdamW for everything else.

Why our own Muon rather than `torch.optim.Muon`: the project's torch floor (2.6) has no Muon, and
torch's orthogonalises whatever tensor it is handed, which for an FSDP2 parameter is a DTensor shard,
not the matrix. The maths here is exactly torch's (same momentum, Newton-Schulz quintic in bf16,
lr adjustment and decoupled weight decay); `tests/test_optim.py` checks bit-equality with
`torch.optim.Muon` whenever the installed torch has it.

FSDP / DTensor: orthogonalisation needs the whole matrix (it acts on its singular values). When a
parameter is a `DTensor` (FSDP2 `fully_shard`, HSDP, TP) the momentum buffer stays sharded like the
gradient (it is created with `zeros_like` and updated element-wise), the Nesterov update is
all-gathered with `full_tensor()`, every rank runs Newton-Schulz on the identical full matrix, and
each rank keeps its own shard of the result by local slicing (`distribute_tensor(...,
src_data_rank=None)`: no second collective). This is correct for any placements but costs one
all-gather per matrix and redundant Newton-Schulz work on every rank (a faster scheme would assign
each matrix to one rank and scatter the results).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim import AdamW, Optimizer

# Quintic coefficients from Keller Jordan's Muon (maximal slope at zero; converges to singular values
# in roughly [0.7, 1.2] rather than exactly 1; singular values under ~1% of the largest are only
# partly lifted, which works as well in practice and needs fewer steps).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7


def zeropower_via_newtonschulz(matrix: Tensor, steps: int, eps: float = NS_EPS) -> Tensor:
    """Approximate U V^T of the SVD U S V^T of a 2-D `matrix` (in bf16, like the reference)."""
    if matrix.ndim != 2:
        raise ValueError(f"Muon: expected a 2-D matrix, got shape {tuple(matrix.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = matrix.bfloat16()
    tall = matrix.size(0) > matrix.size(1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.T
    x = x.div(x.norm().clamp(min=eps))  # Frobenius norm >= spectral norm, so the spectrum is in [0, 1]
    for _ in range(steps):
        gram = x @ x.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, poly, x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, rule: str, shape: torch.Size) -> float:
    """Scale Muon's lr by matrix shape so that updates of differently shaped matrices are comparable."""
    rows, cols = shape[0], shape[1]
    if rule == "original":  # Keller Jordan: sqrt(max(1, rows / cols))
        return lr * math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":  # Moonshot: update RMS ~0.2, like AdamW's, so AdamW lr/wd carry over
        return lr * 0.2 * math.sqrt(max(rows, cols))
    if rule == "none":
        return lr
    raise ValueError(f"Muon: unknown lr adjustment rule {rule!r} (expected original|match_rms_adamw|none)")


def orthogonalize(update: Tensor, steps: int) -> Tensor:
    """Newton-Schulz on the full matrix; a DTensor is gathered first and re-sharded like its input."""
    if isinstance(update, DTensor):
        full = zeropower_via_newtonschulz(update.full_tensor(), steps)
        # Every rank holds the same full result, so each keeps its shard by slicing (no communication).
        return distribute_tensor(full, update.device_mesh, update.placements, src_data_rank=None)
    return zeropower_via_newtonschulz(update, steps)


class MuonWithAdamW(Optimizer):
    """One optimizer: Muon for groups marked `use_muon=True`, torch AdamW for all other groups.

    `param_groups` is a single list (Muon and AdamW groups, in the order given) so the trainer can set
    `group["lr"]` on every group; `state_dict()` / `load_state_dict()` cover both halves. The AdamW
    half is a real `torch.optim.AdamW` (fused / foreach kernels) that shares this optimizer's group
    dicts and state, re-linked whenever they are replaced (load_state_dict, unpickling).
    """

    def __init__(
        self,
        param_groups: list[dict[str, Any]],
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        adjust_lr: str = "match_rms_adamw",
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        adjusted_lr(lr, adjust_lr, torch.Size((1, 1)))  # validates the rule name up front
        muon_defaults = {
            "lr": lr,
            "weight_decay": weight_decay,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "adjust_lr": adjust_lr,
        }
        adamw_groups = []
        for group in param_groups:
            if group.get("use_muon"):
                for key, value in muon_defaults.items():
                    group.setdefault(key, value)
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon: only 2-D parameters can use Muon, got shape {tuple(p.shape)}")
            else:
                adamw_groups.append(group)
        # AdamW fills its defaults into (and keeps) the very dicts that become our param_groups below.
        self._adamw = (
            AdamW(adamw_groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused, foreach=foreach)
            if adamw_groups
            else None
        )
        super().__init__(param_groups, defaults={})
        self._link_adamw()

    def _link_adamw(self) -> None:
        if self._adamw is not None:
            self._adamw.param_groups = [g for g in self.param_groups if not g.get("use_muon")]
            self._adamw.state = self.state

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_adamw": self._adamw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._link_adamw()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group.get("use_muon"):
                self._muon_group_step(group)
        if self._adamw is not None:
            self._adamw.step()
        return loss

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            ortho = orthogonalize(update, group["ns_steps"])
            p.mul_(1 - lr * wd)
            p.add_(ortho, alpha=-adjusted_lr(lr, group["adjust_lr"], p.shape))
