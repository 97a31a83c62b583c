"""Suggest a prelude / recurrent block / coda split for a local HF causal LM.

    python utils/layer_analysis.py --model_path /models/Llama-3.2-1B [--calibration c4_val.parquet]
        [--target_recurrent_size 4] [--out_json runs/layer_analysis/llama.json] [--save_plot llama.png]

Prints a per-layer table and the converter flags, writes JSON and a PNG. See
recur/convert/layer_analysis.py for the method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recur.convert.layer_analysis import DTYPES, analyse_model
from recur.convert.layer_report import format_summary, format_table, save_plot, write_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="local Hugging Face model directory (no hub downloads)")
    p.add_argument(
        "--calibration",
        default=None,
        help="parquet ('text' column) or jsonl ('text' field); default: 32 built-in prompts",
    )
    p.add_argument("--num_samples", type=int, default=None, help="use at most this many calibration texts")
    p.add_argument("--max_length", type=int, default=512, help="truncate each text to this many tokens")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument(
        "--target_recurrent_size",
        type=int,
        default=None,
        help="force the recurrent block to exactly N layers (see choose_split)",
    )
    p.add_argument("--knee_sensitivity", type=float, default=1.0, help="Kneedle sensitivity S")
    p.add_argument("--smooth_window", type=int, default=1, help="odd moving-average window before Kneedle")
    p.add_argument(
        "--out_json", type=Path, default=None, help="default: runs/layer_analysis/<model dir name>_layers.json"
    )
    p.add_argument("--save_plot", type=Path, default=None, help="PNG path; default: next to the JSON (.png)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out_json = args.out_json or Path("runs/layer_analysis") / f"{Path(args.model_path).resolve().name}_layers.json"
    plot = args.save_plot or out_json.with_suffix(".png")
    try:
        analysis = analyse_model(
            args.model_path,
            args.calibration,
            args.num_samples,
            args.max_length,
            args.batch_size,
            args.device,
            args.dtype,
            args.target_recurrent_size,
            args.knee_sensitivity,
            args.smooth_window,
        )
        write_json(analysis, out_json)
        save_plot(analysis, plot)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(analysis))
    print()
    print(format_summary(analysis))
    print(f"wrote {out_json} and {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
