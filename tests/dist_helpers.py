"""Launching tiny real multi-process training runs for the distributed tests (CPU, gloo).

`run_training(...)` starts `train.py` through torchrun (or plain python for one process) with a tiny
recurrent model on a shared generated dataset and returns the per-step metrics. `python -m
tests.dist_helpers --fail-rank R --fail-step S -- <train.py flags>` is a train.py stand-in that
injects faults (a raising rank, a NaN loss) for the robustness tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SEQ_LEN = 32
GLOBAL_BATCH = 12  # divisible by 1, 2, 3 and 4 ranks (6 per rank on 2 ranks)

TINY = [
    "--model_size",
    "tiny",
    "--model.d_model",
    "64",
    "--model.n_heads",
    "4",
    "--model.n_layers",
    "4",
    "--model.dropout",
    "0",
    "--steps",
    "20",
    "--seed",
    "3",
    "--device",
    "cpu",
    "--data.global_batch_size",
    str(GLOBAL_BATCH),
    "--recurrence.mean_recurrence",
    "3",
    "--recurrence.backprop_depth",
    "2",
    "--optim.schedule.warmup_steps",
    "2",
    "--optim.schedule.lr",
    "3e-3",
    "--checkpoint.interval",
    "0",
    "--eval.num_samples",
    "1",
    "--eval.depths",
    "[1]",
    "--eval.tasks",
    "[parity]",
    "--eval.max_new_tokens",
    "4",
    "--log.interval",
    "100",
    "--log.plot_interval",
    "1000",
]


def make_dataset(out: Path) -> Path:
    from recur.data.packing import pack_dataset

    pack_dataset(
        out,
        tokenizer="byte",
        seq_len=SEQ_LEN,
        tasks=["parity", "copy"],
        num_docs=600,
        seed=0,
        packing="concat",
        overwrite=True,
    )
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))
    }
    # One thread per process: the tests run several processes on 2 cores; also makes CPU numerics stable.
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), DS_ACCELERATOR="cpu", **extra)
    return env


def launch_command(nproc: int, script: list[str], port: int | None = None) -> list[str]:
    if nproc == 1:
        return [PYTHON, *script]
    return [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port or free_port()),
        *script,
    ]


def train_args(data: Path, out: Path, run: str, *extra: str) -> list[str]:
    return ["train.py", *TINY, "--data.path", str(data), "--out_dir", str(out), "--run_name", run, *extra]


def run_training(
    data: Path, out: Path, run: str, nproc: int = 1, *extra: str, check: bool = True, timeout: float = 240
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        launch_command(nproc, train_args(data, out, run, *extra)),
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"run {run} ({nproc} procs) failed with {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def metrics(out: Path, run: str) -> list[dict]:
    return [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]


def _inject_faults(fail_rank: int, fail_step: int, kind: str) -> None:
    """Patch the model so that rank `fail_rank` raises (kind=raise), gets a NaN loss (kind=nan) or receives
    SIGUSR1 (kind=preempt) at training forward number `fail_step` (one micro-batch per step in these tests)."""
    import torch

    from recur.models.lm import DecoderLM

    original = DecoderLM.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training and int(os.environ.get("RANK", "0")) == fail_rank:
            calls["n"] += 1
            if calls["n"] == fail_step + 1:
                if kind == "raise":
                    raise RuntimeError(f"injected failure at step {fail_step}")
                if kind == "preempt":  # slurm's warning signal reaching this rank only
                    os.kill(os.getpid(), signal.SIGUSR1)
                else:
                    out.loss = out.loss * torch.tensor(float("nan"))
        return out

    DecoderLM.forward = forward


if __name__ == "__main__":
    fail_rank, fail_step, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    _inject_faults(fail_rank, fail_step, kind)
    sys.argv = ["train.py", *sys.argv[4:]]
    sys.path.insert(0, str(ROOT))
    import train

    sys.exit(train.main())
