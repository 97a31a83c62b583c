"""Atomic, resumable checkpoints of the whole training state.

Layout of one checkpoint (a directory `step_00000100/` under the run's `checkpoints/`):
    .metadata, *.distcp        model + optimizer, torch.distributed.checkpoint (sharded when the model is;
                               loads on any world size: FSDP resharding happens in dcp.load)
    or deepspeed/              model + optimizer of a DeepSpeed engine (engine.save_checkpoint; same world size)
    trainer_state.json         step, tokens, data loader state, model config, world size, ...
    rng_rank00000.pt ...       every RNG of every rank (python, numpy, torch, cuda)
    COMPLETE                   written last: a directory without it is partial and never loaded

A checkpoint is written into `step_N.tmp/`, fsynced, and renamed, so a crash at any moment leaves
either the previous checkpoints or a complete new one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from recur import atomic
from recur.models.config import ModelConfig

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.json"
DEEPSPEED_DIR = "deepspeed"


def checkpoint_format(path: Path) -> str:
    return "deepspeed" if (Path(path) / DEEPSPEED_DIR).is_dir() else "dcp"


class DCPState:
    """Model + optimizer written with torch.distributed.checkpoint: plain, DDP-replicated or FSDP-sharded
    modules alike; a load reshards onto whatever world size and sharding the live model has."""

    format = "dcp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.model, self.optimizer = model, optimizer

    def save(self, directory: Path) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(directory))

    def load(self, directory: Path, saved_world_size: int | None) -> None:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        bundle = {"model": model_sd, "optim": optim_sd}
        dcp.load(bundle, checkpoint_id=str(directory))
        set_state_dict(self.model, self.optimizer, model_state_dict=bundle["model"], optim_state_dict=bundle["optim"])


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write `data` as JSON to `path` atomically, fsynced before the rename."""
    with atomic.atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` is not a loadable checkpoint, or None if it is complete."""
    if not path.is_dir():
        return "not a directory"
    for name in (COMPLETE, STATE_FILE):
        if not (path / name).is_file():
            return f"missing {name} (partial write?)"
    if not (path / ".metadata").is_file() and not (path / DEEPSPEED_DIR).is_dir():
        return f"missing .metadata (DCP) or {DEEPSPEED_DIR}/ (partial write?)"
    try:
        json.loads((path / STATE_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"{STATE_FILE} is damaged: {exc}"
    return None


def read_trainer_state(path: Path) -> dict:
    """trainer_state.json of a complete checkpoint (step, tokens, loader state, ...), without loading weights."""
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint.resume: checkpoint {path} does not exist")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--checkpoint.resume: {path} is not a complete checkpoint: {problem}")
    return json.loads((path / STATE_FILE).read_text())


class Checkpointer:
    def __init__(self, root: str | Path, keep: int = 3, rank: int = 0, world_size: int = 1):
        if keep < 1:
            raise ValueError(f"--checkpoint.keep must be >= 1, got {keep}")
        self.root, self.keep, self.rank, self.world_size = Path(root), keep, rank, world_size

    def complete_checkpoints(self, report: bool = False) -> list[Path]:
        """Complete checkpoints, oldest first; damaged or partial ones are reported and skipped."""
        found = []
        for path in sorted(self.root.glob("step_*")):
            problem = "unfinished temporary directory" if path.name.endswith(".tmp") else checkpoint_problem(path)
            if problem is None:
                found.append(path)
            elif report and self.rank == 0:
                print(f"[checkpoint] skipping {path}: {problem}", file=sys.stderr)
        return found

    def latest(self) -> Path | None:
        found = self.complete_checkpoints(report=True)
        return found[-1] if found else None

    def newer_than(self, step: int) -> list[Path]:
        """Complete checkpoints of this run after `step`, oldest first."""
        return [path for path in self.complete_checkpoints() if int(path.name.removeprefix("step_")) > step]

    def save(self, step: int, state: DCPState, trainer_state: dict) -> Path:
        """Write model/optimizer (`state`: DCPState or parallel.deepspeed.DeepSpeedState), RNGs and
        `trainer_state` as checkpoint `step`; every rank calls this. A complete checkpoint of `step` is never
        replaced: it raises before anything is written (train.py refuses such resumes up front)."""
        final = self.root / f"step_{step:08d}"
        if checkpoint_problem(final) is None:
            raise ValueError(f"checkpoint {final} already exists and is complete; refusing to overwrite it")
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        state.save(tmp)
        rng_file = tmp / f"rng_rank{self.rank:05d}.pt"
        torch.save(rng_state(), rng_file)
        with open(rng_file, "rb") as f:
            os.fsync(f.fileno())
        _barrier()
        if self.rank == 0:
            write_json_atomic(
                tmp / STATE_FILE, {**trainer_state, "step": step, "world_size": self.world_size, "format": state.format}
            )
            for file in tmp.rglob("*"):  # neither DCP nor DeepSpeed fsyncs its files
                if file.is_file():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
            write_json_atomic(tmp / COMPLETE, {"step": step})
            _fsync_dir(tmp)
            # An existing `final` is damaged (checked above): never loadable, resume skips it with a note.
            atomic.replace(tmp, final)
            _fsync_dir(self.root)
            for old in self.complete_checkpoints()[: -self.keep]:
                shutil.rmtree(old)
        _barrier()
        return final

    def load(self, path: str | Path, state: DCPState, model_config: dict) -> dict:
        """Restore model, optimizer (`state`) and this rank's RNGs; return the trainer state."""
        path = Path(path)
        trainer_state = read_trainer_state(path)
        saved = trainer_state.get("model_config", {})
        if "extra" in saved:  # written before the variant groups: compare it as this version writes it
            saved = asdict(ModelConfig.from_dict(saved).resolved())
        diffs = [
            f"{k}: checkpoint {saved[k]!r} vs run {model_config.get(k)!r}"
            for k in saved
            if saved[k] != model_config.get(k) and k not in ("attn_backend", "dropout")
        ]
        if diffs:
            raise ValueError(f"checkpoint {path} is from a different model ({'; '.join(diffs[:4])})")
        if checkpoint_format(path) != state.format:
            raise ValueError(
                f"--checkpoint.resume: {path} was written by the {checkpoint_format(path)} backend and "
                f"cannot be resumed by the {state.format} backend; resume with the same --dist.backend "
                "or export it with utils/export_checkpoint.py"
            )
        state.load(path, trainer_state.get("world_size"))
        rng_file = path / f"rng_rank{self.rank:05d}.pt"
        if trainer_state.get("world_size") == self.world_size and rng_file.exists():
            set_rng_state(torch.load(rng_file, weights_only=False))
        else:
            # Resharded resume: per-rank RNG streams cannot carry over; derive fresh ones from the step.
            seed_everything(trainer_state.get("seed", 0) * 1_000_003 + trainer_state["step"] * 1009 + self.rank)
        return trainer_state


class SavePolicy:
    """When training checkpoints, decided from the step count alone so every rank decides alike: every
    --checkpoint.interval steps (but not at --steps: the final save is that one), and at --stop_at or on a
    preemption signal, after which the run exits (`stop_reason`); at the end with --checkpoint.save_final."""

    def __init__(self, steps: int, interval: int, stop_at: int | None, save_final: bool):
        self.steps, self.interval, self.stop_at, self.save_final = steps, interval, stop_at, save_final

    def stop_reason(self, done: int, preempted_ranks: int) -> str | None:
        """Why the run checkpoints step `done` and exits now (preempted_ranks: how many got a signal), or None."""
        if preempted_ranks:
            return f"signal on {preempted_ranks} rank(s)"
        return f"--stop_at {done}" if done == self.stop_at else None

    def periodic(self, done: int) -> bool:
        return bool(self.interval) and done % self.interval == 0 and done != self.steps

    def final(self, start_step: int) -> bool:
        """Save the state after the last step, unless the run resumed at --steps: that checkpoint is this state."""
        return self.save_final and start_step < self.steps
