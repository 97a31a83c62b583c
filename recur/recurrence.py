"""How deep to loop at each training step: the step sampler and its two curricula.

Every training step draws (n, k): n iterations without gradient, then k with gradient. The draw is a
pure function of (seed, step): all ranks agree without communication and a resumed run redraws the same
sequence, so the sampler has no state to checkpoint.

Law (Huginn, "Scaling up test-time compute with latent reasoning"): with scheduled mean r̄ and backprop
depth s (s is clipped to r̄ while the curriculum has r̄ < s),
    τ ~ Normal(log r̄ − σ²/2, σ),   r ~ Poisson(e^τ) + 1,   n = max(r − s, 0),   k = min(s, r),
so E[r] = r̄ + 1 (the log-normal has mean r̄) with a heavy right tail. `sampling="fixed"` uses r = r̄.

`single_pass_fraction` f first trains at r = 1 (n = 0, k = 1) for the first f of the steps, then runs both
curricula over the remaining steps as if the run started there. With a pass-through adapter and a zero
initial state the r = 1 phase trains the unique layers as one plain stack: the retrofitting recipe (train
a baseline, then loop its layers; docs/recurrence.md, probes 7-9) in one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SCHEDULES = ("constant", "linear", "1-sqrt")
SAMPLINGS = ("poisson-lognormal", "fixed")


@dataclass
class RecurrenceConfig:
    mean_recurrence: int = 4  # target r̄
    backprop_depth: int = 8  # target s: at most this many iterations get gradients
    sampling: str = "poisson-lognormal"
    sigma: float = 0.5
    max_recurrence: int | None = None  # optional cap on a sampled r (bounds step time; lowers the mean)
    mean_schedule: str = "constant"
    mean_start: int = 1
    mean_warmup: float = 0.25  # fraction of training over which r̄ ramps from mean_start to mean_recurrence
    backprop_schedule: str = "constant"
    backprop_start: int = 1
    backprop_warmup: float = 0.25
    single_pass_fraction: float = 0.0  # first fraction of training at r = 1 exactly, before the curricula
    seed: int = 0

    def validate(self) -> None:
        for flag, value, allowed in (
            ("sampling", self.sampling, SAMPLINGS),
            ("mean_schedule", self.mean_schedule, SCHEDULES),
            ("backprop_schedule", self.backprop_schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"--recurrence.{flag}: got '{value}'; expected one of {', '.join(allowed)}")
        for flag in ("mean_recurrence", "backprop_depth", "mean_start", "backprop_start"):
            if getattr(self, flag) < 1:
                raise ValueError(f"--recurrence.{flag} must be >= 1, got {getattr(self, flag)}")
        if self.sampling == "fixed" and self.backprop_depth > self.mean_recurrence:
            raise ValueError(
                f"--recurrence.backprop_depth {self.backprop_depth} exceeds the fixed recurrence "
                f"--recurrence.mean_recurrence {self.mean_recurrence} (k must be <= r)"
            )
        if not 0.0 <= self.single_pass_fraction < 1.0:
            raise ValueError(f"--recurrence.single_pass_fraction must lie in [0, 1), got {self.single_pass_fraction}")
        if self.max_recurrence is not None and self.max_recurrence < 1:
            raise ValueError(f"--recurrence.max_recurrence must be >= 1, got {self.max_recurrence}")


def ramp(step: int, total_steps: int, start: int, end: int, warmup: float, shape: str) -> int:
    """Integer schedule: `start` at step 0, rising to `end` at warmup·total_steps, then constant."""
    if shape == "constant":
        return end
    warmup_steps = max(1.0, warmup * total_steps)
    progress = min(step / warmup_steps, 1.0)
    factor = progress if shape == "linear" else 1.0 - math.sqrt(1.0 - progress)
    return max(start, min(end, math.ceil(start + (end - start) * factor - 1e-9)))


@dataclass(frozen=True)
class StepDepth:
    no_grad_steps: int  # n
    grad_steps: int  # k
    mean_recurrence: int  # scheduled r̄ at this step
    backprop_depth: int  # scheduled s at this step

    @property
    def total(self) -> int:
        return self.no_grad_steps + self.grad_steps


class RecurrenceSampler:
    def __init__(self, cfg: RecurrenceConfig, total_steps: int):
        cfg.validate()
        self.cfg, self.total_steps = cfg, total_steps
        self.single_pass_steps = int(cfg.single_pass_fraction * total_steps)

    def single_pass(self, step: int) -> bool:
        return step < self.single_pass_steps

    def schedule(self, step: int) -> tuple[int, int]:
        """(r̄, s) scheduled at `step`, with s clipped to r̄ (1, 1 during the single-pass phase)."""
        if self.single_pass(step):
            return 1, 1
        c = self.cfg
        step, total = step - self.single_pass_steps, self.total_steps - self.single_pass_steps
        mean = ramp(step, total, c.mean_start, c.mean_recurrence, c.mean_warmup, c.mean_schedule)
        depth = ramp(step, total, c.backprop_start, c.backprop_depth, c.backprop_warmup, c.backprop_schedule)
        return mean, min(depth, mean)

    def __call__(self, step: int) -> StepDepth:
        if self.single_pass(step):
            return StepDepth(no_grad_steps=0, grad_steps=1, mean_recurrence=1, backprop_depth=1)
        mean, depth = self.schedule(step)
        if self.cfg.sampling == "fixed":
            r = mean
        else:
            # Seed from (seed, step) only: identical on every rank and after a resume.
            rng = np.random.default_rng([self.cfg.seed, step, 0x5EC])
            sigma = self.cfg.sigma
            tau = rng.normal(math.log(mean) - sigma**2 / 2, sigma)
            r = int(rng.poisson(math.exp(tau))) + 1
        if self.cfg.max_recurrence is not None:
            r = min(r, self.cfg.max_recurrence)
        k = min(depth, r)
        return StepDepth(no_grad_steps=r - k, grad_steps=k, mean_recurrence=mean, backprop_depth=depth)

    def expected_total(self, step: int) -> float:
        """Analytic E[r] at `step` (ignoring max_recurrence): r̄ + 1 for the Huginn law, r̄ when fixed."""
        if self.single_pass(step):
            return 1.0
        mean, _ = self.schedule(step)
        return mean + (1.0 if self.cfg.sampling != "fixed" else 0.0)
