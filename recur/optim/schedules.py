"""Learning-rate schedules as pure functions of the step.

No scheduler object carries state: the lr of step `s` depends only on `s`, the schedule config and the
run length, so resuming from a checkpoint needs nothing but the step counter.

Every schedule starts with a linear warmup, `lr * (step + 1) / warmup_steps`, which reaches the peak
lr at step `warmup_steps - 1` (step 0 never gets a wasted zero lr). Steps are 0-based and the run's
last step is `total_steps - 1`; schedules that decay reach `lr * min_lr_ratio` exactly there and stay
there for any later step.
"""

from __future__ import annotations

import math

from recur.optim.config import LRScheduleConfig


def _check_length(cfg: LRScheduleConfig, total_steps: int, decay_steps: int) -> None:
    if total_steps < 1:
        raise ValueError(f"lr schedule: total_steps must be >= 1, got {total_steps}")
    if cfg.warmup_steps >= total_steps > 1:  # the run would end before (or at) its peak lr
        raise ValueError(
            f"--optim.schedule.warmup_steps {cfg.warmup_steps} must be below the run length "
            f"({total_steps} steps): the run would end before training at the peak lr"
        )
    if cfg.warmup_steps + decay_steps > total_steps:
        raise ValueError(
            f"--optim.schedule.warmup_steps {cfg.warmup_steps} + decay steps ({decay_steps}) exceed the "
            f"run length ({total_steps} steps); shorten the warmup or the decay"
        )


def wsd_decay_steps(cfg: LRScheduleConfig, total_steps: int) -> int:
    """Number of final steps over which the wsd schedule decays (at least one when decay_fraction > 0)."""
    if cfg.decay_fraction == 0:
        return 0
    return max(1, round(cfg.decay_fraction * total_steps))


def check_schedule(cfg: LRScheduleConfig, total_steps: int) -> None:
    """Raise unless the warmup and decay fit a run of `total_steps` steps (the trainer checks this
    before anything is written; lr_at on every step)."""
    _check_length(cfg, total_steps, wsd_decay_steps(cfg, total_steps) if cfg.name == "wsd" else 0)


def lr_at(step: int, cfg: LRScheduleConfig, total_steps: int) -> float:
    """Learning rate for 0-based `step` of a run of `total_steps` steps."""
    if step < 0:
        raise ValueError(f"lr schedule: step must be >= 0, got {step}")
    check_schedule(cfg, total_steps)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    min_lr = cfg.lr * cfg.min_lr_ratio
    if cfg.name == "constant":
        return cfg.lr
    if cfg.name == "cosine":
        span = total_steps - 1 - cfg.warmup_steps
        progress = 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)
        return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: stable at the peak, then the last `decay_steps` steps fall so that step total_steps-1 hits min_lr.
    decay_steps = wsd_decay_steps(cfg, total_steps)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return cfg.lr
    progress = min(1.0, (step - decay_start + 1) / decay_steps)
    remaining = 1.0 - progress if cfg.decay_shape == "linear" else 1.0 - math.sqrt(progress)
    return min_lr + (cfg.lr - min_lr) * remaining
