"""Shared pieces of the trainer tests: a tiny run configuration and checkpoint readers."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

REPO = Path(__file__).resolve().parents[1]


def tree_digest(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path: equal digests mean nothing was changed."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(directory).rglob("*"))
        if p.is_file()
    }


def tiny_args(run_dir: Path, data_dir: Path | None, steps: int = 40, **extra: str) -> list[str]:
    """A tiny run on `data_dir` (None: on data train.py generates into the run)."""
    args = {
        "--out_dir": str(run_dir.parent),
        "--run_name": run_dir.name,
        "--data.path": "null" if data_dir is None else str(data_dir),
        "--model.d_model": "64",
        "--model.n_heads": "4",
        "--model.max_seq_len": "64",
        "--data.global_batch_size": "8",
        "--steps": str(steps),
        "--optim.schedule.warmup_steps": "5",
        "--optim.schedule.lr": "3e-3",
        "--eval.num_samples": "2",
        "--eval.depths": "[1]",
        "--eval.tasks": "[copy]",
        "--log.plot_interval": "1000",
        "--recurrence.mean_recurrence": "3",
        "--recurrence.backprop_depth": "2",
        "--checkpoint.interval": "5",
    }
    args.update(extra)
    return [item for pair in args.items() for item in pair]


def train_cmd(args: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def run_train(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(train_cmd(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


def run_train_in_process(args: list[str]) -> subprocess.CompletedProcess:
    """train.py's main() in this process, for refused commands and short runs whose process is not what is
    tested: the same exit code and stderr as `run_train`, without a new interpreter (importing torch and
    starting up cost seconds per command). train.py
    installs its preemption handlers on import and a run seeds the global generators: the test process's own
    handlers and generator states are put back."""
    import random

    import numpy as np

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    rng = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    argv, err = sys.argv, io.StringIO()
    try:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import train

        sys.argv = ["train.py", *args]
        with contextlib.redirect_stderr(err):
            try:
                code = train.main()
            except SystemExit as exit_:  # what sys.exit(main()) would have ended the process with
                code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])
    return subprocess.CompletedProcess(train_cmd(args), code, "", err.getvalue())


def losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records]


def final_state(run_dir: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Model and optimizer tensors of the newest checkpoint, flattened to {name: tensor}."""
    newest = sorted((run_dir / "checkpoints").glob("step_*[0-9]"))[-1]
    out = tmp_path / f"{run_dir.name}-final.pt"
    dcp_to_torch_save(newest, out)
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(f"{prefix}.{key}", value)

    walk("", torch.load(out, weights_only=False))
    return flat
