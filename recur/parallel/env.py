"""Process topology: rank, world size and device of this process, and torch.distributed start-up.

Two launchers are understood:
- torchrun (or any launcher that exports RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
- slurm's `srun` with one task per GPU (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST):
  the master is the first host of the nodelist, the port is derived from the job id so that two jobs
  sharing a node do not collide.
torchrun's variables win when both are present (torchrun inside an `srun` allocation).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# The variables init_distributed exported, with the values they had before (None: unset).
_replaced_env: dict[str, str | None] = {}


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(spec: str, local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a slurm hostlist: "node[01-03,07],gpu5" -> node01 node02 node03 node07 gpu5.

    Zero padding of a range is kept ("[08-10]" -> 08 09 10); several bracket groups in one name
    ("r[1-2]n[1-2]") expand to their product, in slurm's order.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist.strip()):
        expanded = [""]
        for literal, group in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            choices = [literal] if not group else [literal + v for v in _expand_ranges(group, nodelist)]
            expanded = [prefix + choice for prefix in expanded for choice in choices]
        hosts.extend(h for h in expanded if h)
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST: no host in {nodelist!r}")
    return hosts


def _split_top_level(text: str) -> list[str]:
    items, depth, current = [], 0, ""
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"SLURM_JOB_NODELIST: unbalanced ']' in {text!r}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError(f"SLURM_JOB_NODELIST: unbalanced '[' in {text!r}")
    return [item for item in items + [current] if item]


def _expand_ranges(group: str, nodelist: str) -> list[str]:
    values = []
    for part in group.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if match is None:
            raise ValueError(f"SLURM_JOB_NODELIST: cannot parse range {part!r} in {nodelist!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise ValueError(f"SLURM_JOB_NODELIST: descending range {part!r} in {nodelist!r}")
        values.extend(str(n).zfill(len(low)) for n in range(int(low), int(high) + 1))
    return values


def first_slurm_host(nodelist: str) -> str:
    """The first host of the allocation; `scontrol show hostnames` is authoritative when it exists."""
    if shutil.which("scontrol"):
        result = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if result.returncode == 0 and result.stdout.split():
            return result.stdout.split()[0]
    return expand_nodelist(nodelist)[0]


def slurm_master_port(job_id: str) -> int:
    # 15000-24999: clear of the ephemeral range and of common services; jobs on one node differ by id.
    return 15000 + int(re.sub(r"\D", "", job_id) or 0) % 10000


def launch_topology(environ: dict[str, str], master_port: int | None = None) -> dict[str, str | int] | None:
    """Rank, world size, local rank, master address and port from torchrun or slurm variables.

    Returns None for a plain single-process launch. Raises a ValueError naming the variable when a
    launch is half-specified.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in environ]
        if missing and int(environ["WORLD_SIZE"]) > 1:
            raise ValueError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not (launch with torchrun)")
        return {
            "rank": int(environ["RANK"]),
            "world_size": int(environ["WORLD_SIZE"]),
            "local_rank": int(environ.get("LOCAL_RANK", "0")),
            "master_addr": environ.get("MASTER_ADDR", "127.0.0.1"),
            "master_port": int(environ.get("MASTER_PORT", "29500")),
        }
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        for key in ("SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST"):
            if key not in environ:
                raise ValueError(f"SLURM_PROCID is set but {key} is not; launch with srun inside an allocation")
        port = environ.get("MASTER_PORT") or master_port or slurm_master_port(environ.get("SLURM_JOB_ID", "0"))
        return {
            "rank": int(environ["SLURM_PROCID"]),
            "world_size": int(environ["SLURM_NTASKS"]),
            "local_rank": int(environ["SLURM_LOCALID"]),
            "master_addr": environ.get("MASTER_ADDR") or first_slurm_host(environ["SLURM_JOB_NODELIST"]),
            "master_port": int(port),
        }
    return None


def init_distributed(
    device: str, timeout_minutes: float, master_port: int | None = None, always: bool = False
) -> DistEnv:
    """Start torch.distributed (NCCL on GPU, gloo on CPU) when launched with several processes, or with
    `always` also for one process (an explicitly chosen fsdp/ddp/deepspeed backend runs its real code
    path on a 1-rank group, e.g. to compare backends on one GPU)."""
    topology = launch_topology(dict(os.environ), master_port)
    if topology is None and always:
        topology = {
            "rank": 0,
            "world_size": 1,
            "local_rank": 0,
            "master_addr": "127.0.0.1",
            "master_port": master_port or _free_port(),
        }
    if topology is None or (topology["world_size"] == 1 and not always):
        local = 0 if topology is None else topology["local_rank"]
        return DistEnv(device=pick_device(device, local))
    rank, world, local = topology["rank"], topology["world_size"], topology["local_rank"]
    dev = pick_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # Export what env:// needs (slurm launches do not set these), then rendezvous. shutdown_distributed
        # puts the caller's values back: a process that trains in-process and then launches jobs (a test
        # suite, a notebook) must not hand them RANK=0/WORLD_SIZE=1, which would win over srun's topology.
        exported = dict(
            MASTER_ADDR=str(topology["master_addr"]),
            MASTER_PORT=str(topology["master_port"]),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK=str(local),
        )
        _replaced_env.update({key: os.environ.get(key) for key in exported if key not in _replaced_env})
        os.environ.update(exported)
        try:
            dist.init_process_group(
                "nccl" if dev.type == "cuda" else "gloo",
                rank=rank,
                world_size=world,
                timeout=timedelta(minutes=timeout_minutes),
                device_id=dev if dev.type == "cuda" else None,
            )
        except BaseException:  # a failed rendezvous leaves the environment as it found it, too
            _restore_env()
            raise
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _restore_env()


def _restore_env() -> None:
    for key, value in _replaced_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _replaced_env.clear()
