"""Optimizer and learning-rate schedule configuration (plain dataclasses; `validate()` checks every field and
runs from `recur.config.validate_config`, like every other config group)."""

from __future__ import annotations

from dataclasses import dataclass, field

OPTIMIZERS = ("adamw", "muon", "ellisadam")
SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")
MUON_LR_ADJUST = ("original", "match_rms_adamw", "none")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {'|'.join(choices)}, got {value!r}")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value!r}")


@dataclass
class LRScheduleConfig:
    """Learning rate as a pure function of the step (see `recur.optim.schedules.lr_at`).

    `lr` is the peak learning rate and the single source of truth for it: the optimizer is built
    with it and the trainer overwrites every group's lr from `lr_at` on each step.
    """

    name: str = "cosine"  # cosine | wsd (warmup-stable-decay) | constant
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio (cosine and wsd)
    warmup_steps: int = 100  # linear warmup, reaching lr at step warmup_steps - 1
    decay_fraction: float = 0.2  # wsd: fraction of the run spent decaying at the end
    decay_shape: str = "linear"  # wsd: linear | 1-sqrt

    def validate(self) -> None:
        _check_choice("--optim.schedule.name", self.name, SCHEDULES)
        _check_choice("--optim.schedule.decay_shape", self.decay_shape, DECAY_SHAPES)
        if not self.lr > 0:
            raise ValueError(f"--optim.schedule.lr: expected a positive learning rate, got {self.lr!r}")
        _check_range("--optim.schedule.min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_range("--optim.schedule.decay_fraction", self.decay_fraction, 0.0, 1.0)
        if self.warmup_steps < 0:
            raise ValueError(f"--optim.schedule.warmup_steps: expected >= 0, got {self.warmup_steps!r}")


@dataclass
class OptimConfig:
    """Which optimizer, its hyper-parameters, and the lr schedule that drives it."""

    name: str = "adamw"  # adamw | muon (Muon on hidden matrices + AdamW on the rest) | ellisadam
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled; never applied to norms, biases or embeddings
    grad_clip: float | None = 1.0  # max global grad norm, applied by the trainer; None disables
    fused: bool | None = None  # AdamW kernel: None = fused when every param is on CUDA, else foreach
    # Muon (hidden 2-D matrices only).
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    muon_ns_steps: int = 5
    # Muon groups run at lr * muon_lr_scale. With muon_adjust_lr="match_rms_adamw" (Moonshot) the update
    # RMS matches AdamW's, so the AdamW lr and weight decay carry over and the scale stays 1.
    muon_lr_scale: float = 1.0
    muon_adjust_lr: str = "match_rms_adamw"  # original (Keller: sqrt(max(1, rows/cols))) | match_rms_adamw | none
    # ELLISAdam options (see recur/optim/ellisadam.py).
    ellis_grad_norm: bool = False  # g <- g / ||g|| per tensor
    ellis_atan: bool = True  # update = atan2(m_hat, sqrt(v_hat)); bounded by pi/2 and eps-free
    ellis_update_clip: bool = True  # divide the step by max(1, RMS(g / sqrt(v_hat))) per tensor
    ellis_finite_check: bool = True  # a tensor whose grad is not finite is left untouched this step
    schedule: LRScheduleConfig = field(default_factory=LRScheduleConfig)

    def __post_init__(self) -> None:  # normalises what yaml / json give (a list, a mapping); validate() checks
        self.betas = tuple(float(beta) for beta in self.betas)
        if isinstance(self.schedule, dict):
            self.schedule = LRScheduleConfig(**self.schedule)

    def validate(self) -> None:
        _check_choice("--optim.name", self.name, OPTIMIZERS)
        _check_choice("--optim.muon_adjust_lr", self.muon_adjust_lr, MUON_LR_ADJUST)
        if len(self.betas) != 2:
            raise ValueError(f"--optim.betas: expected two values (beta1, beta2), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"--optim.betas[{i}]: expected a value in [0, 1), got {beta!r}")
        if not self.eps > 0:
            raise ValueError(f"--optim.eps: expected > 0, got {self.eps!r}")
        if self.weight_decay < 0:
            raise ValueError(f"--optim.weight_decay: expected >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"--optim.grad_clip: expected > 0 or null, got {self.grad_clip!r}")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ValueError(f"--optim.muon_momentum: expected a value in [0, 1), got {self.muon_momentum!r}")
        if not 1 <= self.muon_ns_steps < 100:
            raise ValueError(f"--optim.muon_ns_steps: expected 1..99, got {self.muon_ns_steps!r}")
        if not self.muon_lr_scale > 0:
            raise ValueError(f"--optim.muon_lr_scale: expected > 0, got {self.muon_lr_scale!r}")
        self.schedule.validate()
