"""GPU check of the parallel backends: FSDP2 vs DeepSpeed ZeRO-2 vs DDP on the 125M recurrent model.

What it does (CUDA only), all in one run so every number comes from the same machine:
  1. Installs DeepSpeed from the git-ignored ``wheels/`` when it is not importable (no network needed:
     ``pip install --no-index --find-links wheels deepspeed``).
  2. Packs generated algorithmic data once (byte tokenizer, seq_len 1024, bench/out/dist/data).
  3. On 1 GPU: ``train.py --model_size 125M`` for 50 steps in bf16 with --dist.backend ddp, fsdp and
     deepspeed (configs/deepspeed/zero2.json), the same seed, data and recurrence draws. Prints each
     backend's per-step loss agreement with DDP (max and mean |Δ| over the last 10 steps) and tokens/s.
  4. With 2+ GPUs: FSDP and ZeRO-2 on 2 GPUs at the same per-GPU batch (global batch x2); prints tokens/s
     and scaling efficiency = tokens/s(2 GPUs) / (2 x tokens/s(1 GPU)).
Throughput is the mean over steps 10..50 (compilation/allocator warm-up excluded).
Exit code: 0 all losses agree within bf16 tolerance (mean |Δ| of the last 10 steps < 0.05), 1 otherwise,
2 no CUDA.

Wheels (git-ignored ``wheels/``, prepared on a CPU machine): deepspeed-0.19.8-py3-none-any (built with
``pip wheel --no-deps --no-build-isolation deepspeed==0.19.8``, no compiled ops), hjson, py-cpuinfo, ninja,
annotated-types, typing-inspection, pydantic 2.14.4, psutil (abi3), and pydantic-core / msgpack for
CPython 3.10-3.13 (manylinux x86_64); pip takes only what the machine lacks.

Run from the repository root on the GPU machine (device tool: ``carry=["wheels"]``):

    python bench/gpu_dist_check.py [--steps 50] [--batch-per-gpu 16] [--gpus 1|2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "dist"
TOLERANCE = 0.05  # bf16, 50 steps: mean |loss difference| over the last 10 steps


def ensure_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(ROOT / "wheels"), "deepspeed"],
            check=True,
        )


def make_data(seq_len: int, num_docs: int) -> Path:
    from recur.data.packing import pack_dataset

    path = OUT / "data"
    if not (path / "manifest.json").exists():
        pack_dataset(
            path,
            tokenizer="byte",
            seq_len=seq_len,
            tasks=["parity", "copy", "reverse", "mod_add"],
            num_docs=num_docs,
            seed=0,
            packing="bfd",
            mask_non_assistant=True,
            overwrite=True,
        )
    return path


def train(run: str, gpus: int, backend: str, data: Path, steps: int, batch_per_gpu: int) -> list[dict]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(gpus),
        "train.py",
        "--model_size",
        "125M",
        "--steps",
        str(steps),
        "--seed",
        "0",
        "--dtype",
        "bf16",
        "--data.path",
        str(data),
        "--data.global_batch_size",
        str(batch_per_gpu * gpus),
        "--out_dir",
        str(OUT),
        "--run_name",
        run,
        "--dist.backend",
        backend,
        "--dist.deepspeed_config",
        "configs/deepspeed/zero2.json",
        "--checkpoint.interval",
        "0",
        "--checkpoint.save_final",
        "false",
        "--eval.num_samples",
        "1",
        "--eval.depths",
        "[1]",
        "--eval.tasks",
        "[parity]",
        "--log.interval",
        "10",
        "--optim.schedule.warmup_steps",
        "10",
    ]
    print(f"[run] {run}: {' '.join(command[3:])}", flush=True)
    shutil.rmtree(OUT / run, ignore_errors=True)  # every check measures a fresh run (train.py refuses a taken name)
    subprocess.run(command, cwd=ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": "4"})
    return [json.loads(line) for line in (OUT / run / "metrics.jsonl").read_text().splitlines()]


def throughput(records: list[dict]) -> float:
    timed = records[10:] or records
    return sum(r["tokens_per_s"] for r in timed) / len(timed)


def agreement(records: list[dict], reference: list[dict]) -> tuple[float, float]:
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(records, reference)]
    return max(diffs), sum(diffs[-10:]) / len(diffs[-10:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-per-gpu", type=int, default=16, help="rows of 1024 tokens per GPU per step")
    parser.add_argument("--gpus", type=int, default=None, help="default: 2 when available, else 1")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_dist_check: no CUDA device", file=sys.stderr)
        return 2
    gpus = args.gpus or min(2, torch.cuda.device_count())
    ensure_deepspeed()
    data = make_data(1024, num_docs=max(20_000, args.steps * args.batch_per_gpu * gpus * 40))
    print(f"[device] {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}", flush=True)

    single = {b: train(f"{b}_1gpu", 1, b, data, args.steps, args.batch_per_gpu) for b in ("ddp", "fsdp", "deepspeed")}
    ok = True
    print("\n== 1 GPU, bf16, 125M, loss vs DDP ==")
    print(f"{'backend':<10} {'max|Δ|':>8} {'mean|Δ| last10':>15} {'final loss':>10} {'tokens/s':>10}")
    for backend, records in single.items():
        worst, recent = agreement(records, single["ddp"])
        ok &= recent < TOLERANCE
        print(f"{backend:<10} {worst:>8.4f} {recent:>15.4f} {records[-1]['loss']:>10.4f} {throughput(records):>10,.0f}")
    if gpus >= 2:
        print(f"\n== {gpus} GPUs vs 1 GPU (same per-GPU batch) ==")
        print(f"{'backend':<10} {'tok/s 1gpu':>11} {f'tok/s {gpus}gpu':>11} {'efficiency':>10} {'final loss':>10}")
        for backend in ("fsdp", "deepspeed"):
            records = train(f"{backend}_{gpus}gpu", gpus, backend, data, args.steps, args.batch_per_gpu)
            one, many = throughput(single[backend]), throughput(records)
            print(
                f"{backend:<10} {one:>11,.0f} {many:>11,.0f} {many / (gpus * one):>10.1%} {records[-1]['loss']:>10.4f}"
            )
    print(f"\nloss agreement within bf16 tolerance ({TOLERANCE}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
