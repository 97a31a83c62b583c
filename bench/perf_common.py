"""Shared pieces of the GPU benchmarks: environment line, timing, matmul peak, profiling, RESULTS.md output."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class RecompileCounter(logging.Handler):
    """Counts dynamo's "Recompiling function" log records while in its `with` block (TORCH_LOGS=recompiles
    is turned on meanwhile); torch keeps no counter of them (torch._dynamo.utils.counters has no recompile
    entry in 2.13)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __enter__(self) -> RecompileCounter:
        torch._logging.set_logs(recompiles=True)
        logging.getLogger("torch._dynamo").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("torch._dynamo").removeHandler(self)
        torch._logging.set_logs()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Recompiling function" in record.getMessage()


def environment_line() -> str:
    """GPU, driver, torch and CUDA versions, for the header of every result."""
    if torch.cuda.is_available():
        try:
            driver = (
                subprocess.run(
                    ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                .stdout.strip()
                .splitlines()[0]
            )
        except (OSError, subprocess.CalledProcessError):
            driver = "unknown"
        gpu = f"{torch.cuda.get_device_name()} (driver {driver}, CUDA {torch.version.cuda})"
    else:
        gpu = f"CPU only ({platform.processor() or platform.machine()})"
    return f"{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def time_steps(step: Callable[[], None], warmup: int, iters: int) -> float:
    """Seconds per call of `step` (mean over `iters` after `warmup`); one sync at each end, none inside."""
    for _ in range(warmup):
        step()
    sync()
    began = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - began) / iters


def matmul_peak_tflops(n: int, iters: int = 20) -> float:
    """Measured bf16 (fp32 on CPU) n×n×n matmul throughput in TFLOP/s: the MFU denominator."""
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    a = torch.randn(n, n, device=device(), dtype=dtype)
    b = torch.randn(n, n, device=device(), dtype=dtype)
    seconds = time_steps(lambda: a @ b, warmup=3, iters=iters)
    return 2 * n**3 / seconds / 1e12


def profile_top(step: Callable[[], None], steps: int, out_dir: Path | None, name: str, top: int = 3) -> list[str]:
    """Profile `steps` calls; return the `top` ops by self device time (CPU time on CPU) with their share,
    and write the full table to out_dir/profile_<name>.txt."""
    on_gpu = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if on_gpu else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    key = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    ranked = sorted(events, key=lambda e: getattr(e, key), reverse=True)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
        (out_dir / f"profile_{name}.txt").write_text(events.table(sort_by=sort_by, row_limit=40))
    return [
        f"`{e.key[:90]}` {100 * getattr(e, key) / total:.1f}% ({getattr(e, key) / 1e3 / steps:.1f} ms/step)"
        for e in ranked[:top]
    ]


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def append_results(path: Path, title: str, body: str) -> None:
    """Append one dated section (environment, command, body) to the results file, written atomically."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {title} ({stamp})\n\n- Environment: {environment_line()}\n"
        f"- Command: `{' '.join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`\n\n{body}\n"
    )
    old = path.read_text() if path.exists() else "# GPU benchmark results\n"
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(old + section)
    tmp.replace(path)
    print(section, flush=True)
