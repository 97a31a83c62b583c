#!/usr/bin/env python3
"""Run the whole ablation ladder at one size on a reduced budget, then compare the runs.

    python scripts/run_nano_ladder.py [--size nano] [--steps 60] [--out_dir runs/ladder] [train.py flags...]

Flags this script does not know go to every train.py call unchanged, e.g. ``--model.vocab_size 320`` to
size the embedding for the byte tokenizer of the generated data (the presets carry GPT-2's 50,304, which on
a CPU costs most of a nano step) or ``--device cuda``.

Each variant trains through `train.py --config configs/ladder/<variant>.yaml --model_size <size>` in its
own subprocess (same data, seed, steps and batch) and is scored by `eval_hub.py --suite all` at the ladder
depths; then compare_runs.py writes the comparison (ReLSM criteria vs baseline), and a
summary table from each run's summary.json (loss, throughput, params, accuracy) is printed and saved as
<out_dir>/ladder.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from recur.cli_common import child_env
from recur.run_dir import RunDir

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("baseline", "shared_loop", "latent", "act", "ssm", "ssm_mem")


def train_variant(variant: str, args: argparse.Namespace) -> Path:
    run_dir = Path(args.out_dir) / f"{args.size}_{variant}"
    if RunDir(run_dir).summary.exists():
        if not args.force:
            print(f"[ladder] {variant}: done already ({run_dir}); --force retrains", file=sys.stderr)
            return run_dir
        print(f"[ladder] {variant}: --force: removing the finished run {run_dir}", file=sys.stderr)
        shutil.rmtree(run_dir)  # train.py never trains a new run over an existing one
    # A run stopped part way (crash, Ctrl-C) continues from its newest checkpoint.
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--config",
        str(ROOT / "configs" / "ladder" / f"{variant}.yaml"),
        "--model_size",
        args.size,
        "--steps",
        str(args.steps),
        "--out_dir",
        args.out_dir,
        "--run_name",
        run_dir.name,
        "--checkpoint.resume",
        "auto",
        "--data.seq_len",
        str(args.seq_len),
        "--data.num_docs",
        str(args.num_docs),
        "--data.global_batch_size",
        str(args.batch_size),
        "--eval.num_samples",
        str(args.eval_samples),
        "--eval.depths",
        json.dumps(args.depths),
        "--checkpoint.interval",
        "0",
        "--log.interval",
        "10",
        *args.train_args,
    ]
    print(f"[ladder] {variant}: {' '.join(cmd[1:])}", file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, env=child_env(ROOT))
    return run_dir


def evaluate_variant(run_dir: Path, args: argparse.Namespace) -> None:
    """eval_hub's full suite (ID + OOD accuracy, needle, perplexity) at the ladder depths, for compare_runs.py."""
    if (run_dir / "eval" / "results_all.json").exists() and not args.force:
        return
    cmd = [
        sys.executable,
        str(ROOT / "eval_hub.py"),
        "--checkpoint",
        str(run_dir),
        "--suite",
        "all",
        "--num_steps",
        *map(str, args.depths),
        "--num_samples",
        str(args.eval_samples),
        "--max_rows",
        "256",
        "--needle_samples",
        "2",
    ]
    print(f"[ladder] eval {run_dir.name}: {' '.join(cmd[1:])}", file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, env=child_env(ROOT))


def summary_table(run_dirs: list[Path]) -> str:
    lines = [
        "| variant | params (total / non-emb) | first loss | final loss | tokens/s | wall s | mean accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for run_dir in run_dirs:
        s = json.loads(RunDir(run_dir).summary.read_text())
        acc = s.get("eval") or {}
        mean_acc = sum(acc.values()) / len(acc) if acc else float("nan")
        lines.append(
            f"| {run_dir.name.split('_', 1)[1]} | {s['params']['total'] / 1e6:.2f}M / "
            f"{s['params']['non_embedding'] / 1e6:.2f}M | {s['first_loss']:.3f} | {s['final_loss']:.3f} | "
            f"{s['mean_tokens_per_s']:.0f} | {s['wall_time_s']:.0f} | {mean_acc:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="nano")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq_len", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--num_docs", type=int, default=4000)
    p.add_argument("--eval_samples", type=int, default=16)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 4])
    p.add_argument("--out_dir", default="runs/ladder")
    p.add_argument("--force", action="store_true", help="delete and retrain runs that already have a summary.json")
    args, args.train_args = p.parse_known_args()
    if args.steps < 1:
        print("run_nano_ladder.py: error: --steps must be >= 1", file=sys.stderr)
        return 2
    try:
        run_dirs = [train_variant(v, args) for v in args.variants]
        for run_dir in run_dirs:
            evaluate_variant(run_dir, args)
    except subprocess.CalledProcessError as error:
        print(f"run_nano_ladder.py: error: training or evaluation failed: {error}", file=sys.stderr)
        return 1
    table = summary_table(run_dirs)
    out = Path(args.out_dir) / "ladder.md"
    tmp = out.with_suffix(".md.tmp")
    extra = f" (train.py {' '.join(args.train_args)})" if args.train_args else ""
    tmp.write_text(f"# Ladder at {args.size}, {args.steps} steps{extra}\n\n{table}")
    os.replace(tmp, out)
    print(table)
    compare = [
        sys.executable,
        str(ROOT / "compare_runs.py"),
        *map(str, run_dirs),
        "--out_dir",
        str(Path(args.out_dir) / "compare"),
    ]
    result = subprocess.run(compare, cwd=ROOT, env=child_env(ROOT))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
