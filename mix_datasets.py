"""Mix packed datasets by token proportion into equally sized, shuffled shards.

Examples:
  python mix_datasets.py --source data/tasks:0.3 --source data/corpus:0.7 --num_shards 8 --seed 0 \
      --out_dir data/mix
  python mix_datasets.py --config mix.yaml --num_tokens 50000000 --num_shards 8 --out_dir data/mix
mix.yaml:  sources: [{path: data/tasks, weight: 0.3}, {path: data/corpus, weight: 0.7}]
"""

from __future__ import annotations

import argparse
import sys

from recur.cli_common import run_cli
from recur.data.mixing import load_mix_config, mix_datasets, parse_source


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", action="append", default=[], help="PATH:WEIGHT (token proportion), repeatable")
    parser.add_argument("--config", help="YAML file with a 'sources' list of {path, weight}")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--num_shards", type=int, default=1, help="equally sized output shards")
    parser.add_argument("--seed", type=int, default=0, help="seed of row sampling and shuffling")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num_rows", type=int, help="output rows (default: largest mix repeating no source)")
    size.add_argument("--num_tokens", type=int, help="output non-pad tokens (approximate, whole rows)")
    parser.add_argument("--row_group_size", type=int, default=1024)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out_dir")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def run() -> int:
        sources = [parse_source(spec) for spec in args.source]
        if args.config:
            sources += load_mix_config(args.config)
        mix_datasets(
            sources,
            args.out_dir,
            num_shards=args.num_shards,
            seed=args.seed,
            num_rows=args.num_rows,
            num_tokens=args.num_tokens,
            row_group_size=args.row_group_size,
            overwrite=args.overwrite,
        )
        return 0

    return run_cli("mix_datasets.py", run)


if __name__ == "__main__":
    sys.exit(main())
