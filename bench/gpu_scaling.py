"""Multi-GPU scaling of the recurrent 760M and 1B-16k presets (FSDP2 and DeepSpeed ZeRO), plus a resharding
resume (checkpoint on the most GPUs, resume on half of them).

Every run is `train.py` under torchrun with a fixed per-GPU batch, the recurrent variant at r̄ = 8, k = 4
(Poisson-lognormal draws capped at 16 so one long draw cannot dominate a short run). Throughput and MFU
are the mean over the steps after the first two (warm-up excluded). Scaling efficiency =
tokens/s(N GPUs) / (N · tokens/s(1 GPU)) for the same model and backend.

    python bench/gpu_scaling.py --gpus 1 2 4            # on the GPU machine (device tool, carry wheels/)
    python bench/gpu_scaling.py --smoke                 # CPU, gloo, tiny model: checks the plumbing

Results: a table on stdout, JSON lines in bench/out/scaling/results.jsonl, and a section appended to
bench/RESULTS.md (with --results).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "scaling"

# (model preset, seq_len, per-GPU rows, extra flags)
MODELS = {
    "760M": (2048, 2, ["--model.max_seq_len", "2048"]),
    "1B-16k": (16384, 1, ["--dist.activation_checkpointing", "true"]),
}
SMOKE_MODEL = ("tiny", 64, 2, ["--model.d_model", "64"])


def ensure_packages() -> None:
    for module, package in (("deepspeed", "deepspeed"), ("jsonargparse", "jsonargparse")):
        try:
            __import__(module)
        except ImportError:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-index",
                    "--find-links",
                    str(ROOT / "wheels"),
                    package,
                ],
                check=True,
            )


def make_data(seq_len: int, rows: int) -> Path:
    from recur.data.packing import pack_dataset

    path = OUT / f"data_{seq_len}"
    if not (path / "manifest.json").exists():
        docs = max(2000, rows * seq_len // 30)  # generated task documents are ~30 tokens
        pack_dataset(
            path,
            tokenizer="byte",
            seq_len=seq_len,
            tasks=["parity", "copy", "reverse", "mod_add"],
            num_docs=docs,
            seed=0,
            packing="concat",
            overwrite=True,
        )
    return path


def run(
    name: str,
    size: str,
    gpus: int,
    backend: str,
    data: Path,
    global_rows: int,
    micro_rows: int,
    steps: int,
    extra: list[str],
    smoke: bool,
    resume: bool = False,
    stop_at: int | None = None,
) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(gpus),
        str(ROOT / "train.py"),
        "--model_size",
        size,
        "--variant",
        "recurrent",
        "--steps",
        str(steps),
        "--data.path",
        str(data),
        "--data.global_batch_size",
        str(global_rows),
        "--data.micro_batch_size",
        str(micro_rows),
        "--out_dir",
        str(OUT / "runs"),
        "--run_name",
        name,
        "--dist.backend",
        "deepspeed" if backend.startswith("zero") else backend,
        "--recurrence.mean_recurrence",
        "8",
        "--recurrence.backprop_depth",
        "4",
        "--recurrence.max_recurrence",
        "16",
        "--optim.schedule.warmup_steps",
        "2",
        "--checkpoint.interval",
        "0",
        "--checkpoint.save_final",
        "false",
        "--eval.num_samples",
        "1",
        "--eval.depths",
        "[1]",
        "--eval.tasks",
        "[copy]",
        "--log.interval",
        "1",
        *extra,
    ]
    if backend.startswith("zero"):
        cmd += ["--dist.deepspeed_config", f"configs/deepspeed/{backend}.json"]
    if resume:
        cmd += ["--checkpoint.resume", "auto"]
    if stop_at is not None:
        cmd += ["--stop_at", str(stop_at)]
    if smoke:
        cmd += ["--device", "cpu", "--dtype", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "4", "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1"}
    if smoke:
        env["DS_ACCELERATOR"] = "cpu"
    if not resume:  # every benchmark measures a fresh run (train.py refuses a taken --run_name)
        shutil.rmtree(OUT / "runs" / name, ignore_errors=True)
    began = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    metrics_path = OUT / "runs" / name / "metrics.jsonl"
    records = [json.loads(line) for line in metrics_path.read_text().splitlines()] if metrics_path.exists() else []
    timed = records[2:] or records
    result = {
        "run": name,
        "model": size,
        "backend": backend,
        "gpus": gpus,
        "rc": proc.returncode,
        "steps": len(records),
        "wall_s": round(time.time() - began, 1),
        "tokens_per_s": sum(r["tokens_per_s"] for r in timed) / len(timed) if timed else None,
        "mfu": (sum(r["mfu"] for r in timed) / len(timed)) if timed and timed[0].get("mfu") else None,
        "peak_mem_gb": max((r.get("peak_mem_gb") or 0) for r in records) if records else None,
        "losses": [round(r["loss"], 5) for r in records],
        "checksums": [r.get("data_checksum") for r in records],
    }
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-1500:]
    with open(OUT / "results.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"{name:<28} rc={proc.returncode} steps={len(records)} tok/s={result['tokens_per_s'] or 0:,.0f} "
        f"mfu={result['mfu'] or 0:.3f} mem={result['peak_mem_gb'] or 0:.1f}GB wall={result['wall_s']}s",
        flush=True,
    )
    if proc.returncode != 0:
        print(result["stderr_tail"], flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--no-reshard", action="store_true", help="skip the resharding resume")
    parser.add_argument("--results", default=None, help="append a section to this markdown file")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.smoke:
        ensure_packages()
    models = {"tiny": SMOKE_MODEL[1:]} if args.smoke else {m: MODELS[m] for m in args.models}
    most = max(args.gpus)
    results = []
    for size, (seq_len, rows, extra) in models.items():
        data = make_data(seq_len, rows * most * (args.steps + 2))
        plan = [("fsdp", g) for g in args.gpus]
        plan += [("zero2", most)] if size != "1B-16k" else [("zero3", most)]
        for backend, gpus in plan:
            results.append(
                run(
                    f"{size}-{backend}-{gpus}",
                    size,
                    gpus,
                    backend,
                    data,
                    rows * gpus,
                    rows,
                    args.steps,
                    extra,
                    args.smoke,
                )
            )
    table = summarize(results)
    print(table)
    reshard = None if args.no_reshard else reshard_resume(args, models, results, most)
    if args.results:
        append_results(args, table, reshard, most)
    return 0 if all(r["rc"] == 0 for r in results) else 1


def reshard_resume(args, models: dict, results: list[dict], most: int) -> dict:
    """Stop (checkpoint) at step 4 on `most` GPUs, resume on half with the same global batch (two
    micro-batches per GPU); the straight reference is the same-size FSDP run on `most` GPUs."""
    size = "tiny" if args.smoke else args.models[0]
    seq_len, rows, extra = models[size]
    data = make_data(seq_len, rows * most * (args.steps + 2))
    straight = next(r for r in results if r["run"] == f"{size}-fsdp-{most}")
    half = max(1, most // 2)
    name = f"{size}-reshard-{most}to{half}"
    first = run(name, size, most, "fsdp", data, rows * most, rows, args.steps, extra, args.smoke, stop_at=4)
    second = run(name, size, half, "fsdp", data, rows * most, rows, args.steps, extra, args.smoke, resume=True)
    diffs = [abs(a - b) for a, b in zip(straight["losses"], second["losses"])]
    reshard = {
        "first_losses": first["losses"],
        "straight_losses": straight["losses"],
        "resumed_losses": second["losses"],
        "checksums_equal": straight["checksums"] == second["checksums"],
        "max_loss_diff": max(diffs, default=None),
        "first_rc": first["rc"],
        "second_rc": second["rc"],
    }
    print(json.dumps(reshard), flush=True)
    return reshard


def append_results(args, table: str, reshard: dict | None, most: int) -> None:
    gpu = os.popen("nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1").read().strip()
    import torch

    with open(args.results, "a") as f:
        f.write(
            f"\n## Multi-GPU scaling ({datetime.date.today()}, {gpu}, torch {torch.__version__})\n\n"
            f"Command: `python bench/gpu_scaling.py --gpus {' '.join(map(str, args.gpus))} --models "
            f"{' '.join(args.models)} --steps {args.steps}`\n\n{table}\n"
        )
        if reshard is not None:
            f.write(f"\nResharding resume ({most} -> {max(1, most // 2)} GPUs): `{json.dumps(reshard)}`\n")


def summarize(results: list[dict]) -> str:
    base = {(r["model"], r["backend"]): r["tokens_per_s"] for r in results if r["gpus"] == 1 and r["tokens_per_s"]}
    lines = [
        "| model | backend | GPUs | tokens/s | MFU | scaling eff. | peak GiB/GPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        one = base.get((r["model"], r["backend"])) or base.get((r["model"], "fsdp"))
        eff = r["tokens_per_s"] / (r["gpus"] * one) if one and r["tokens_per_s"] else None
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['gpus']} | {r['tokens_per_s'] or 0:,.0f} | "
            f"{(r['mfu'] or 0):.1%} | {'' if eff is None else f'{eff:.1%}'} | {r['peak_mem_gb'] or 0:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
