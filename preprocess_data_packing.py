"""Tokenize and pack text/chat files or generated algorithmic tasks into a packed parquet dataset.

Examples:
  python preprocess_data_packing.py --tasks parity addition --num_docs 100000 --seed 0 \
      --tokenizer byte --seq_len 512 --packing bfd --mask_non_assistant --out_dir data/tasks
  python preprocess_data_packing.py corpus.jsonl notes.txt --tokenizer path/to/hf_tok --seq_len 2048 \
      --packing concat --num_proc 8 --out_dir data/corpus
"""

from __future__ import annotations

import argparse
import sys

from recur.cli_common import run_cli
from recur.data.packing import PACKING_MODES, pack_dataset
from recur.data.tasks import TASKS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help=".jsonl / .parquet / .txt files (txt: one doc per paragraph)")
    parser.add_argument("--tasks", nargs="+", default=[], help=f"generate task data: {', '.join(TASKS)}")
    parser.add_argument("--num_docs", type=int, default=0, help="documents to generate with --tasks")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task generators")
    parser.add_argument("--difficulty", type=int, default=None, help="task difficulty (default: train level)")
    parser.add_argument("--tokenizer", default="byte", help="'byte' or a local HF tokenizer directory")
    parser.add_argument("--seq_len", type=int, required=True, help="model sequence length; rows hold seq_len+1")
    parser.add_argument("--packing", choices=PACKING_MODES, default="concat")
    parser.add_argument("--mask_non_assistant", action="store_true", help="train only on assistant replies")
    parser.add_argument("--truncate", action="store_true", help="bfd: cut documents longer than a row")
    parser.add_argument("--num_proc", type=int, default=1, help="tokenizer worker processes")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--rows_per_shard", type=int, default=8192)
    parser.add_argument("--row_group_size", type=int, default=1024)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out_dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = vars(args)
    out_dir = options.pop("out_dir")

    def run() -> int:
        pack_dataset(out_dir, **options)
        return 0

    return run_cli("preprocess_data_packing.py", run)


if __name__ == "__main__":
    sys.exit(main())
