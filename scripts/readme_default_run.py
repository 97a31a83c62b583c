#!/usr/bin/env python
"""Rewrite the README's measured numbers of the embedded default run from the run itself.

    python train.py                                   # the embedded default -> runs/default
    python scripts/readme_default_run.py              # rewrites the block between the README markers
    python scripts/readme_default_run.py --check      # exit 1 when the README does not match the run

The block between `<!-- default-run -->` and `<!-- /default-run -->` is generated, so its numbers are always
those of a real run: loss, held-out loss per depth, accuracy per task and depth with n and a 95% Wilson
interval, throughput and wall time (from summary.json, eval.jsonl and config.yaml of the run directory).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import yaml

from recur.eval.stats import wilson_interval
from recur.run_dir import RunDir

BEGIN, END = "<!-- default-run -->", "<!-- /default-run -->"


def _depth_ranges(values: dict[int, float], fmt: str) -> str:
    """{depth: value} -> "0.276 at r=1, 0.274 at r=2–8": runs of depths that print alike are merged."""
    parts, run = [], []
    for depth in sorted(values):
        if run and format(values[depth], fmt) != format(values[run[0]], fmt):
            parts.append(run)
            run = []
        run.append(depth)
    parts.append(run)
    return ", ".join(f"{format(values[r[0]], fmt)} at r={r[0] if len(r) == 1 else f'{r[0]}–{r[-1]}'}" for r in parts)


def render(run_dir: Path) -> str:
    """The generated README sentences for one finished run."""
    run = RunDir(run_dir)
    summary = json.loads(run.summary.read_text())
    final_eval = json.loads(run.eval_log.read_text().splitlines()[-1])
    n = yaml.safe_load(run.config.read_text())["eval"]["num_samples"]
    per_task: dict[str, dict[int, float]] = {}
    for key, accuracy in summary["eval"].items():
        task, depth = key.split("@r")
        per_task.setdefault(task, {})[int(depth)] = accuracy
    tasks = []
    for task, by_depth in per_task.items():
        low, high = (
            wilson_interval(round(min(by_depth.values()) * n), n)[0],
            wilson_interval(round(max(by_depth.values()) * n), n)[1],
        )
        tasks.append(f"{task} {_depth_ranges(by_depth, '.2f')} (95% interval over depths [{low:.2f}, {high:.2f}])")
    held_out = {int(k[1:]): v for k, v in (final_eval.get("val_loss") or {}).items()}
    date = datetime.datetime.fromtimestamp(run.summary.stat().st_mtime).date().isoformat()
    return (
        f"Measured {date} ({summary['steps']} steps, {summary['mean_tokens_per_s']:,.0f} tokens/s, "
        f"{summary['wall_time_s'] / 60:.1f} minutes of training): the loss falls from {summary['first_loss']:.2f} "
        f"to {summary['final_loss']:.2f}, held-out loss {_depth_ranges(held_out, '.3f')}; exact match on "
        f"{n} problems per task and depth: " + "; ".join(tasks) + "."
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/default"))
    p.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    p.add_argument("--check", action="store_true", help="exit 1 if the README block differs from the run")
    args = p.parse_args()
    if not RunDir(args.run).summary.is_file():
        p.exit(
            2,
            f"readme_default_run.py: error: --run {args.run} has no summary.json (run `python train.py` "
            "to completion first)\n",
        )
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        p.exit(2, f"readme_default_run.py: error: --readme {args.readme} lacks the {BEGIN} ... {END} markers\n")
    head, rest = text.split(BEGIN, 1)
    body, tail = rest.split(END, 1)
    fresh = "\n" + render(args.run) + "\n"
    if args.check:
        sys.exit(0 if body == fresh else 1)
    tmp = args.readme.with_suffix(".tmp")
    tmp.write_text(head + BEGIN + fresh + END + tail)
    tmp.replace(args.readme)  # atomic: a failure leaves the README as it was


if __name__ == "__main__":
    main()
