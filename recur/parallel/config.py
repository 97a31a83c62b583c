"""Configuration of multi-process training (`--dist.*`)."""

from __future__ import annotations

from dataclasses import dataclass

BACKENDS = ("auto", "none", "ddp", "fsdp", "deepspeed")
NAN_POLICIES = ("skip", "stop")
AC_POLICIES = ("full", "selective")  # recur.parallel.fsdp.apply_activation_checkpointing


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (fsdp when world size > 1, else none) | none | ddp | fsdp | deepspeed
    timeout_minutes: float = 30.0  # collective timeout: a rank stuck this long fails the job instead of hanging
    activation_checkpointing: bool = False  # recompute each block's activations in backward (fsdp, ddp, none)
    ac_policy: str = "full"  # full (recompute the whole block) | selective (keep attention outputs)
    cpu_offload: bool = False  # fsdp: keep sharded params/grads/optimizer state in host memory
    reshard_core: bool = False  # fsdp: free the core blocks' gathered params after every loop iteration
    deepspeed_config: str = "configs/deepspeed/zero2.json"  # deepspeed: JSON config ("auto" values filled from ours)
    nan_policy: str = "skip"  # skip (zero grads, skip the optimizer step) | stop (report and exit, no checkpoint)
    max_skipped_steps: int = 5  # skip: this many non-finite steps in a row end the run (report, exit 2)
    master_port: int | None = None  # slurm launch without MASTER_PORT: default derived from the job id

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--dist.backend: expected one of {'|'.join(BACKENDS)}, got {self.backend!r}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"--dist.nan_policy: expected one of {'|'.join(NAN_POLICIES)}, got {self.nan_policy!r}")
        if self.max_skipped_steps < 1:
            raise ValueError(f"--dist.max_skipped_steps: expected an integer >= 1, got {self.max_skipped_steps!r}")
        if self.ac_policy not in AC_POLICIES:
            raise ValueError(f"--dist.ac_policy: expected one of {'|'.join(AC_POLICIES)}, got {self.ac_policy!r}")
        if self.ac_policy != "full" and not self.activation_checkpointing:
            raise ValueError(f"--dist.ac_policy {self.ac_policy} needs --dist.activation_checkpointing true")
        if not self.timeout_minutes > 0:
            raise ValueError(f"--dist.timeout_minutes: expected a positive number, got {self.timeout_minutes!r}")
