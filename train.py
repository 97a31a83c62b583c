#!/usr/bin/env python3
"""Train a recurrent-depth language model. `python train.py` runs the embedded default (tiny model on
generated algorithmic data, CPU, a few minutes); `python train.py --help` lists every option."""

import sys

import recur.preemption

recur.preemption.install()  # before the slow imports: a preemption during start-up must not kill us

from recur.cli import parse_config  # noqa: E402
from recur.train_loop import train  # noqa: E402


def main() -> int:
    try:
        cfg, yaml_text = parse_config()
    except (ValueError, FileNotFoundError) as error:  # one clear line, not a traceback
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, config_yaml=yaml_text)
    except (ValueError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
