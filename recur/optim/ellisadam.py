"""ELLISAdam: AdamW with per-tensor safety options for unstable (e.g. deeply looped) training.

Options, each applied per parameter tensor and each independently switchable:

* `grad_norm`: g <- g / ||g||. Makes the step invariant to the gradient's scale, so one tensor's
  exploding gradient cannot dominate; Adam's moments then track directions only.
* `atan`: update = atan2(m_hat, sqrt(v_hat)) instead of m_hat / (sqrt(v_hat) + eps) (Adam-atan2).
  Bounded by pi/2 per element, and eps-free: no eps to tune against tiny second moments.
* `update_clip`: divide the step by max(1, RMS(g / sqrt(v_hat))) (StableAdamW / Adafactor update
  clipping). When the current gradient is far larger than the second moment has seen (a spike that
  v, with its slow beta2, has not caught up with), the step shrinks instead of exploding.
* `finite_check`: a tensor whose gradient has a NaN/Inf is left untouched this step (parameter,
  moments and its step counter), while the other tensors still step. Done with masks, never a
  host sync; skips are counted on the device and reported by `skipped_tensors()` so nothing is
  skipped silently.

With every option off this is exactly AdamW (decoupled weight decay, bias-corrected moments). Each
tensor keeps its own step counter, since a finite-check skip advances some tensors and not others.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.optimizer import ParamsT


class ELLISAdam(Optimizer):
    """AdamW plus tensor-wise gradient normalisation, atan2 updates, update clipping and finite checks."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
        *,
        grad_norm: bool = False,
        atan: bool = True,
        update_clip: bool = True,
        finite_check: bool = True,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"ELLISAdam: lr must be >= 0, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"ELLISAdam: betas must be in [0, 1), got {betas!r}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "grad_norm": grad_norm,
            "atan": atan,
            "update_clip": update_clip,
            "finite_check": finite_check,
        }
        super().__init__(params, defaults)
        # Device-side skip counters, one per device; a diagnostic, deliberately not part of state_dict.
        self._skipped: dict[torch.device, Tensor] = {}

    def skipped_tensors(self) -> int:
        """(tensor, step) updates skipped by the finite check since this object was built (syncs)."""
        return int(sum(count.item() for count in self._skipped.values()))

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_skipped", {})  # unpickled / deep-copied optimizers start counting afresh

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch keeps a loaded "step" wherever torch.load put it; our step counters live with their param.
        for p, state in self.state.items():
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: Tensor, group: dict) -> None:
        if p.grad.is_sparse:
            raise ValueError("ELLISAdam: sparse gradients are not supported")
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq, step = state["exp_avg"], state["exp_avg_sq"], state["step"]

        grad = p.grad
        # `take` is 1 for a tensor that steps, 0 for a skipped one; it gates every state change below.
        take: Tensor | float = 1.0
        if group["finite_check"]:
            finite = torch.isfinite(grad).all()
            grad = torch.where(finite, grad, torch.zeros_like(grad))
            take = finite.to(torch.float32)
            if p.device not in self._skipped:
                self._skipped[p.device] = torch.zeros((), dtype=torch.float32, device=p.device)
            self._skipped[p.device].add_(1.0 - take)
        if group["grad_norm"]:
            grad = grad / torch.linalg.vector_norm(grad).clamp(min=torch.finfo(torch.float32).tiny)

        # A skipped tensor has grad == 0 here and decay factors of exactly 1: its moments stay put.
        step.add_(take)
        exp_avg.mul_(1 - (1 - beta1) * take).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(1 - (1 - beta2) * take).addcmul_(grad, grad, value=1 - beta2)
        # clamp: a tensor whose very first gradient was skipped still has step 0 and all-zero moments.
        count = step.clamp(min=1.0)
        m_hat = exp_avg / (1 - beta1**count)
        v_root = (exp_avg_sq / (1 - beta2**count)).sqrt()

        update = torch.atan2(m_hat, v_root) if group["atan"] else m_hat / (v_root + eps)
        if group["update_clip"]:
            ratio_rms = (grad / (v_root + eps)).square().mean().sqrt()
            update = update / ratio_rms.clamp(min=1.0)

        p.mul_(1 - lr * group["weight_decay"] * take)
        p.sub_(update * (lr * take))
