#!/usr/bin/env python3
"""Generate from a checkpoint at a chosen recurrence depth, optionally with adaptive exit per token.

    python generate.py --checkpoint runs/default --prompt "parity 10110101" --num_steps 8
    python generate.py --checkpoint runs/default --prompt "succ 1299" --num_steps 32 --exit_criterion kl --exit_eps 1e-4
    python generate.py --checkpoint runs/default --exit_curve 1e-1 1e-2 1e-3 1e-4 --num_steps 32 --out_dir runs/default/eval

Prompts are wrapped in the chat template (a user turn) unless --raw. --exit_curve writes exit_curve.json/.png:
accuracy vs average steps used, adaptive exit at each ε against fixed depths.
"""

import argparse
import json
import sys
from pathlib import Path

from recur.cli_common import run_cli
from recur.data.tasks import TASKS
from recur.eval.adaptive import exit_curve, plot_exit_curve
from recur.eval.generate import EXIT_CRITERIA, ExitRule, generate
from recur.eval.hub import resolve_tokenizer
from recur.eval.load import load_model
from recur.eval.meta import check_depths, default_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run dir (newest checkpoint), checkpoint dir, or model.pt")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeatable)")
    p.add_argument("--raw", action="store_true", help="do not wrap prompts in the chat template")
    p.add_argument("--num_steps", type=int, help="recurrence depth (the cap with adaptive exit); default: model's")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--exit_criterion", choices=EXIT_CRITERIA)
    p.add_argument("--exit_eps", type=float, default=1e-3)
    p.add_argument("--no_cache", action="store_true", help="recompute the whole sequence for every token")
    p.add_argument("--exit_curve", nargs="+", type=float, metavar="EPS", help="accuracy vs average steps used")
    p.add_argument("--tasks", nargs="+", default=["parity", "successor", "compare"], help="for --exit_curve")
    p.add_argument("--num_samples", type=int, default=32, help="for --exit_curve")
    p.add_argument("--difficulty", type=int, help="for --exit_curve (default: each task's training difficulty)")
    p.add_argument("--out_dir", help="for --exit_curve (default: <run>/eval)")
    p.add_argument("--tokenizer")
    p.add_argument("--device")
    return p


def main() -> int:
    args = build_parser().parse_args()
    model, cfg, meta = load_model(args.checkpoint, args.device or default_device())
    tokenizer, _ = resolve_tokenizer(model, meta, args.tokenizer)
    depth = check_depths([args.num_steps])[0] if args.num_steps is not None else cfg.default_num_steps
    if args.exit_curve:
        unknown = [t for t in args.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"--tasks: unknown task(s) {unknown}; expected any of {', '.join(TASKS)}")
        out_dir = Path(args.out_dir) if args.out_dir else (Path(meta.run_dir) / "eval" if meta.run_dir else None)
        if out_dir is None:
            raise ValueError("--out_dir is required when the checkpoint does not live in a run directory")
        curve = exit_curve(
            model,
            tokenizer,
            args.tasks,
            depth,
            args.exit_curve,
            args.exit_criterion or "delta",
            args.num_samples,
            difficulty=args.difficulty,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "exit_curve.json").write_text(json.dumps(curve, indent=2))
        print(f"wrote {plot_exit_curve(curve, out_dir / 'exit_curve.png')} and exit_curve.json")
        for point in curve["fixed"] + curve["adaptive"]:
            label = f"r={point['depth']}" if "depth" in point else f"eps={point['eps']:g}"
            print(f"{label}: accuracy {point['accuracy']:.3f}, mean steps {point['mean_steps']:.2f}")
        return 0
    if not args.prompt:
        raise ValueError("give --prompt TEXT (repeatable) or --exit_curve EPS ...")
    prompts = [
        tokenizer.encode(p) if args.raw else tokenizer.prompt_ids([{"role": "user", "content": p}]) for p in args.prompt
    ]
    rule = ExitRule(args.exit_criterion, args.exit_eps) if args.exit_criterion else None
    out = generate(
        model, prompts, args.max_new_tokens, tokenizer.stop_ids, depth, use_cache=not args.no_cache, exit_rule=rule
    )
    for text, tokens, steps, reason in zip(args.prompt, out.tokens, out.steps, out.stop_reasons):
        print(
            f"> {text}\n{tokenizer.decode(tokens)}\n  [{len(tokens)} tokens, stopped: {reason}, "
            f"steps per token: {steps}, mean {sum(steps) / len(steps):.2f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("generate.py", main))
