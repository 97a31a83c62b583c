"""Process topology: rank, world size and device of this process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine")
    return device


def single_process_env(device: str) -> DistEnv:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("WORLD_SIZE > 1 but distributed training is not initialised")
    return DistEnv(device=pick_device(device))
