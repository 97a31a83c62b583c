"""Multi-depth validation sweep over checkpoints: held-out loss/perplexity and algorithmic accuracy per depth.

    python utils/depth_sweep.py --checkpoint runs/a runs/b --out_dir runs/sweep [--depths 1 2 4 8 16 32 64]
        [--latest_only] [--tasks parity successor] [--num_samples 32] [--ood] [--max_rows 256]

Writes sweep_<run>_step_<N>.json per checkpoint (schema: docs/eval.md), sweep_depth.png (metric vs depth,
one line per checkpoint) and sweep_steps.png (metric vs training step, one line per depth).
"""

from __future__ import annotations

import argparse
import sys

from recur.cli_common import run_cli
from recur.eval.hub import HubConfig
from recur.eval.sweep import DEFAULT_DEPTHS, run_sweep


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="depth_sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", nargs="+", required=True, help="run dirs, checkpoint dirs or model.pt files")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--depths", nargs="+", type=int, default=DEFAULT_DEPTHS)
    p.add_argument("--latest_only", action="store_true", help="only the newest checkpoint of each run")
    p.add_argument(
        "--tasks",
        nargs="+",
        help="algorithmic tasks (default: the run's training tasks when it generated its data, else all)",
    )
    p.add_argument("--num_samples", type=int, default=32)
    p.add_argument("--ood", action="store_true", help="also the OOD difficulty grid")
    p.add_argument("--data", help="held-out packed parquet (default: each run's data/val)")
    p.add_argument("--max_rows", type=int, help="held-out rows scored (default: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer")
    p.add_argument("--device")
    return p


def main() -> int:
    args = build_parser().parse_args()
    cfg = HubConfig(
        checkpoint=args.checkpoint[0],
        tasks=args.tasks,
        num_samples=args.num_samples,
        seed=args.seed,
        ood=args.ood,
        data=args.data,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        tokenizer=args.tokenizer,
        device=args.device,
    )
    written = run_sweep(args.checkpoint, args.out_dir, args.depths, not args.latest_only, cfg)
    print(f"wrote {len(written)} sweep files and sweep_depth.png / sweep_steps.png to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("depth_sweep.py", main))
