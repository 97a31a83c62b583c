#!/usr/bin/env python3
"""Evaluate one checkpoint: algorithmic exact match (in-distribution + OOD grid), needle-in-a-haystack,
held-out perplexity — per recurrence depth — into <out_dir>/results_<suite>.json plus PNG plots.

    python eval_hub.py --checkpoint runs/default --suite all --num_steps 1 4 16
    python eval_hub.py --checkpoint runs/default/checkpoints/step_00001200 --suite algorithmic \\
        --tasks parity addition --out_dir runs/default/eval

The schema of the JSON is documented in docs/eval.md (and recur/eval/schema.py).
"""

import argparse
import sys

from recur.cli_common import run_cli
from recur.eval.generate import EXIT_CRITERIA
from recur.eval.hub import HUB_SUITES, HubConfig, run_hub


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eval_hub.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir (newest checkpoint), checkpoint dir, or model.pt")
    p.add_argument("--suite", default="all", help=f"one of {', '.join(HUB_SUITES)}")
    p.add_argument("--tasks", nargs="+", help="algorithmic tasks (default: the run's training tasks, else all)")
    p.add_argument("--num_steps", nargs="+", type=int, help="recurrence depths (default: the model's default)")
    p.add_argument("--out_dir", help="default: <run>/eval (<model dir>/eval for a Hugging Face directory)")
    p.add_argument("--data", help="held-out packed parquet for perplexity (default: <run>/data/val)")
    p.add_argument("--num_samples", type=int, default=64, help="problems per (task, difficulty, depth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_ood", action="store_true", help="only each task's training difficulty")
    p.add_argument(
        "--grid",
        nargs="+",
        default=[],
        metavar="TASK=D1,D2",
        help="difficulty grid of a task, replacing its training + OOD defaults (e.g. parity=8,16,128)",
    )
    p.add_argument("--max_new_tokens", type=int, help="decoding cap (default: reference answer length + 8)")
    p.add_argument(
        "--context_lengths",
        nargs="+",
        type=int,
        default=[1024, 2048, 4096],
        help="needle context lengths; the model's max_seq_len is always added",
    )
    p.add_argument("--needle_positions", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--needle_samples", type=int, default=4)
    p.add_argument("--max_rows", type=int, help="held-out rows scored (default: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--exit_criterion", choices=EXIT_CRITERIA, help="adaptive exit (num_steps is then the cap)")
    p.add_argument("--exit_eps", type=float, default=1e-3)
    p.add_argument("--tokenizer", help="default: the run's tokenizer, else byte")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--no_plots", action="store_true")
    return p


def parse_grid(items: list[str]) -> dict[str, list[int]] | None:
    grid = {}
    for item in items:
        task, _, levels = item.partition("=")
        try:
            grid[task] = [int(level) for level in levels.split(",")]
        except ValueError:
            raise ValueError(f"--grid: expected TASK=D1,D2,... with integer difficulties, got '{item}'") from None
    return grid or None


def main() -> int:
    args = build_parser().parse_args()
    cfg = HubConfig(
        checkpoint=args.checkpoint,
        suite=args.suite,
        tasks=args.tasks,
        num_steps=args.num_steps,
        out_dir=args.out_dir,
        data=args.data,
        num_samples=args.num_samples,
        seed=args.seed,
        ood=not args.no_ood,
        difficulties=parse_grid(args.grid),
        max_new_tokens=args.max_new_tokens,
        context_lengths=args.context_lengths,
        needle_positions=args.needle_positions,
        needle_samples=args.needle_samples,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        exit_criterion=args.exit_criterion,
        exit_eps=args.exit_eps,
        tokenizer=args.tokenizer,
        device=args.device,
        plots=not args.no_plots,
    )
    results, path = run_hub(cfg)
    for depth_row in results.get("algorithmic", {}).get("summary", []):
        print(f"algorithmic r={depth_row['depth']}: ID {depth_row['in_distribution']}, OOD {depth_row['ood']}")
    for row in results.get("perplexity", {}).get("results", []):
        print(f"perplexity r={row['depth']}: loss {row['loss']:.4f}, ppl {row['perplexity']:.3f}")
    for row in results.get("longctx", {}).get("summary", []):
        print(f"needle {row['context_length']} tokens r={row['depth']}: {row['accuracy']:.2f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("eval_hub.py", main))
