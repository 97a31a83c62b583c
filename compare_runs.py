#!/usr/bin/env python3
"""Compare run directories: one markdown + JSON table, figures, and the ReLSM success criteria per variant.

    python eval_hub.py --checkpoint runs/a --suite all --num_steps 1 4 16   # for every run first
    python compare_runs.py runs/a runs/b runs/c --out_dir runs/compare [--baseline runs/a]

Writes compare.md, compare.json, compare_accuracy.png, compare_ood.png, compare_needle.png and
compare_perplexity.png. Accuracies come with n and a 95% Wilson interval; "(n.s.)" marks a difference from
the baseline whose intervals overlap. Runs evaluated on different held-out sets, sample counts or seeds get
one warning line each on stderr (and on top of compare.md). See recur/eval/compare.py for how each number
and criterion is computed.
"""

import argparse
import sys

from recur.cli_common import run_cli
from recur.eval.compare import compare_runs


def main() -> int:
    p = argparse.ArgumentParser(prog="compare_runs.py", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out_dir", default="runs/compare")
    p.add_argument("--baseline", help="the control run (default: the run whose variant is baseline)")
    p.add_argument("--results_dir", default="eval", help="where each run's eval_hub results live, inside the run")
    p.add_argument("--ppl_tolerance", type=float, default=1.5, help="perplexity collapse = ppl > this × baseline")
    args = p.parse_args()
    report = compare_runs(args.runs, args.out_dir, args.baseline, args.results_dir, args.ppl_tolerance)
    for warning in report["warnings"]:
        print(f"compare_runs.py: warning: {warning}", file=sys.stderr)
    print(open(f"{args.out_dir}/compare.md").read())
    print(f"wrote {args.out_dir}/compare.md, compare.json and figures; baseline: {report['baseline']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("compare_runs.py", main))
