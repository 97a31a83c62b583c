"""Run metrics: one JSON line per step in metrics.jsonl, optional wandb, and a progress line with ETA."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from recur.data.shard_writer import write_atomic_bytes
from recur.run_dir import RunDir

# Dense bf16 peak (TFLOP/s) by GPU name, for MFU when --log.peak_tflops is not given.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def device_peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def measured_matmul_tflops(device: torch.device, dtype: torch.dtype, size: int | None = None, iters: int = 10) -> float:
    """The dense matmul rate this device reaches here and now (TFLOP/s): `iters` products of two square
    matrices of `size` (default 8192 on CUDA, 512 on a CPU) in `dtype`, after a warm-up. The spec sheet's peak
    is rarely reachable and unknown for a CPU; MFU against this rate says how much of what the device really
    does a step uses. Constant inputs: the training RNG streams are left untouched."""
    size = size or (8192 if device.type == "cuda" else 512)
    a = torch.ones(size, size, device=device, dtype=dtype)
    b = torch.ones(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
    began = time.perf_counter()
    for _ in range(iters):
        torch.matmul(a, b)
    sync()
    return 2 * size**3 * iters / (time.perf_counter() - began) / 1e12


def mfu_text(record: dict) -> str:
    """' mfu 35.6% (48% of measured)' from a step record; the part whose peak is unknown is left out."""
    spec, measured = record.get("mfu"), record.get("mfu_measured")
    if spec is not None and measured is not None:
        return f" mfu {spec:.1%} ({measured:.0%} of measured)"
    if measured is not None:
        return f" mfu {measured:.1%} of measured"
    return f" mfu {spec:.1%}" if spec is not None else ""


class MetricsLogger:
    def __init__(
        self,
        run_dir: Path,
        total_steps: int,
        log_interval: int,
        wandb_mode: str,
        wandb_project: str,
        run_name: str,
        config: dict,
        enabled: bool = True,
        resume: bool = False,
        show_depth: bool = True,
    ):
        self.path = RunDir(run_dir).metrics
        self.total_steps, self.log_interval, self.enabled = total_steps, log_interval, enabled
        self.show_depth = show_depth  # off for models that ignore the sampled depth (the baseline)
        self.start = time.time()
        self.wandb = None
        if not enabled:
            return
        if not resume and self.path.exists():
            self.path.unlink()
        if wandb_mode != "disabled":
            if wandb_mode not in ("online", "offline"):
                raise ValueError(f"--log.wandb_mode: got '{wandb_mode}'; expected disabled, online or offline")
            import wandb

            self.wandb = wandb.init(
                project=wandb_project, name=run_name, mode=wandb_mode, config=config, dir=str(run_dir), resume="allow"
            )

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint so the file reads as one uninterrupted run (and a
        torn last line, as a power loss leaves it, with a note)."""
        if not self.enabled or not self.path.exists():
            return
        records, torn = parse_metrics(self.path)
        if torn:
            print(f"[metrics] {self.path}: dropped a torn last line ({torn[:60]!r})", file=sys.stderr)
        kept = "".join(json.dumps(r) + "\n" for r in records if r.get("step", -1) < step)
        write_atomic_bytes(self.path, kept.encode())

    def sync(self) -> None:
        """fsync metrics.jsonl (called with every checkpoint, so a resumed run's log matches its checkpoint)."""
        if self.enabled and self.path.exists():
            with open(self.path, "rb+") as f:
                os.fsync(f.fileno())

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["step"])

    def log_eval(self, step: int, metrics: dict) -> None:
        """Evaluation metrics go to wandb only: eval.jsonl is their local record."""
        if self.enabled and self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def progress(self, record: dict, first_step: int) -> None:
        step = record["step"]
        if not self.enabled or (step % self.log_interval and step != self.total_steps - 1):
            return
        done = step + 1 - first_step
        elapsed = time.time() - self.start
        eta = elapsed / max(done, 1) * (self.total_steps - step - 1)
        mfu = mfu_text(record)
        depth = f"r {record['r']:>3} (r̄ {record['mean_recurrence']}, k {record['k']}) | " if self.show_depth else ""
        print(
            f"step {step + 1:>6}/{self.total_steps} | loss {record['loss']:.4f} | lr {record['lr']:.2e} | "
            f"{depth}{record['tokens_per_s']:,.0f} tok/s{mfu} | gnorm {record['grad_norm']:.2f} | "
            f"eta {_fmt_time(eta)}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def parse_metrics(path: Path) -> tuple[list[dict], str | None]:
    """(records, the torn last line or None). Only the last line may be torn (a crash mid-write); a bad line
    anywhere else is corruption and raises one error naming the file and line."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                return records, line
            raise ValueError(f"{path}: line {number} is not valid JSON ({error})") from None
    return records, None


def read_metrics(path: Path) -> list[dict]:
    return parse_metrics(path)[0]
