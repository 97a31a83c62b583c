#!/usr/bin/env python3
"""Train a recurrent-depth language model. `python train.py` runs the embedded default (tiny model on
generated algorithmic data, CPU, a few minutes); `python train.py --help` lists every option."""

import sys

import recur.preemption

recur.preemption.install()  # before the slow imports: a preemption during start-up must not kill us

from recur.cli import parse_config  # noqa: E402
from recur.cli_common import run_cli  # noqa: E402
from recur.train_loop import train  # noqa: E402


def main() -> int:
    def run() -> int:
        cfg, yaml_text = parse_config()
        train(cfg, config_yaml=yaml_text)  # returns normally when done or after a preemption checkpoint
        return 0

    return run_cli("train.py", run)


if __name__ == "__main__":
    sys.exit(main())
