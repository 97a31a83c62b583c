"""Run the same lm-eval tasks at several recurrence depths and write one JSON of results per depth.

    python utils/lm_eval_depths.py --path models/tinyllama-4-8-4 --tasks arc_easy,hellaswag \
        --depths 1,2,4,8,16 --out runs/eval/tinyllama_depths.json [--include_path my_tasks/] [--limit 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recur.checkpoint import write_json_atomic
from recur.eval.lm_eval_adapter import evaluate_at_depths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--path", required=True, help="saved model directory (utils/convert_hf.py output)")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--depths", default="1,2,4,8", help="comma-separated recurrence depths")
    p.add_argument("--out", type=Path, required=True, help="JSON file: {depth: lm-eval results}")
    p.add_argument("--include_path", default=None, help="directory of extra task YAMLs")
    p.add_argument("--limit", type=float, default=None, help="documents per task (or a fraction)")
    p.add_argument("--num_fewshot", type=int, default=None)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when present)")
    p.add_argument("--tokenizer", default=None, help="'byte' or a tokenizer directory (default: --path)")
    p.add_argument(
        "--apply_chat_template",
        action="store_true",
        help="render prompts with the tokenizer's chat template (as lm_eval --apply_chat_template)",
    )
    args = p.parse_args(argv)
    try:
        depths = [int(d) for d in args.depths.split(",")]
        limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
        results = evaluate_at_depths(
            args.path,
            args.tasks.split(","),
            depths,
            args.include_path,
            limit,
            args.num_fewshot,
            args.device,
            args.batch_size,
            args.tokenizer,
            apply_chat_template=args.apply_chat_template,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"lm_eval_depths: {err}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, {str(d): r for d, r in results.items()})
    for depth, per_task in results.items():
        print(
            f"depth {depth}: "
            + "; ".join(
                f"{task} {', '.join(f'{k}={v:.4f}' for k, v in m.items() if isinstance(v, float))}"
                for task, m in per_task.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
