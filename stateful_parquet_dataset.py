"""Inspect a packed dataset and show what rank r of W reads next from a given loader state.

    python stateful_parquet_dataset.py DIR --rank 0 --world_size 4 --global_batch_size 32 [--state state.json] --show 2

--verify_sha256 first checks every shard's sha256 against the manifest (reads all the data).

Importable too: re-exports the loader API of ``recur.data.loader``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recur.cli_common import run_cli
from recur.data.loader import StatefulDataLoader, StatefulParquetDataset, make_dataloader
from recur.data.validate import open_packed_dataset

__all__ = ["StatefulDataLoader", "StatefulParquetDataset", "make_dataloader", "main"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="packed dataset directory (with manifest.json)")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world_size", type=int, default=1)
    parser.add_argument("--global_batch_size", type=int, help="rows per optimizer step over all ranks")
    parser.add_argument("--micro_batch_size", type=int, default=None)
    parser.add_argument("--seed", type=int, help="order seed (default: the state's, else 0)")
    parser.add_argument(
        "--shuffle_window",
        type=int,
        help="row groups whose rows are shuffled together, cut where a lane (batch position) "
        "ends, so a lane shorter than a window mixes fewer (default: the state's, else 1)",
    )
    parser.add_argument("--no_shuffle", action="store_true", help="read rows in storage order")
    parser.add_argument(
        "--verify_sha256",
        action="store_true",
        help="first check every shard's sha256 against the manifest (reads all the data)",
    )
    parser.add_argument("--state", type=Path, help="loader state JSON (from state_dict()); default: the start")
    parser.add_argument("--show", type=int, default=1, help="how many upcoming global batches to show")
    parser.add_argument("--tokens", type=int, default=8, help="leading tokens printed per row")
    return parser.parse_args(argv)


def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--state {path}: cannot read a loader state JSON ({err})") from err
    if not isinstance(state, dict):
        raise ValueError(f"--state {path}: expected a JSON object from state_dict()")
    return state


def _saved(
    state: dict, key: str, path: Path | None, default: int | bool | None, lowest: int | None
) -> int | bool | None:
    """The --state file's value of ``key`` (checked, naming the file and key), else ``default``."""
    if key not in state:
        return default
    value = state[key]
    if lowest is None and type(value) is not bool:
        raise ValueError(f"--state {path}: {key} must be true or false, got {value!r}")
    if lowest is not None and (type(value) is not int or value < lowest):
        raise ValueError(f"--state {path}: {key} must be an integer >= {lowest}, got {value!r}")
    return value


def _open(args: argparse.Namespace) -> StatefulParquetDataset:
    state = _load_state(args.state) if args.state else {}
    if args.verify_sha256:
        open_packed_dataset(args.path, check_rows=False, verify_sha256=True)
    # Order settings default to the state's so that `--state` alone reproduces the saved run. Each is
    # (name, flag value, default, lowest value or None for true/false); the loader checks flag values.
    settings = {
        key: given if given is not None else _saved(state, key, args.state, default, lowest)
        for key, given, default, lowest in (
            ("global_batch_size", args.global_batch_size, None, 1),
            ("seed", args.seed, 0, 0),
            ("shuffle", False if args.no_shuffle else None, True, None),
            ("shuffle_window", args.shuffle_window, 1, 1),
        )
    }
    if settings["global_batch_size"] is None:
        where = f": --state {args.state} holds none" if args.state else " when no --state is given"
        raise ValueError(f"--global_batch_size is required{where}")
    dataset = StatefulParquetDataset(
        args.path, rank=args.rank, world_size=args.world_size, micro_batch_size=args.micro_batch_size, **settings
    )
    if args.state:
        try:
            dataset.load_state_dict(state)
        except ValueError as err:
            raise ValueError(f"--state {args.state}: {err}") from None
    return dataset


def _report(dataset: StatefulParquetDataset, show: int, tokens: int) -> None:
    shards = dataset.shards
    print(
        f"dataset {shards.path}: {dataset.num_rows} rows x {dataset.row_len} tokens, {len(shards.files)} shards, "
        f"{len(shards.group_sizes)} row groups, fingerprint {shards.fingerprint}"
    )
    order = dataset.order
    print(
        f"order: seed {order.seed}, shuffle {order.shuffle}, shuffle_window {order.shuffle_window}; "
        f"global batch {dataset.global_batch_size} rows, rank {dataset.rank}/{dataset.world_size} reads "
        f"{dataset.rank_batch_size} rows per batch in {dataset.micro_batches_per_step} micro-batch(es)"
    )
    print(f"position: epoch {dataset.epoch}, {dataset.batch_index} global batches consumed")
    for batch_index in range(dataset.batch_index, dataset.batch_index + show):
        for micro in range(dataset.micro_batches_per_step):
            print(f"global batch {batch_index} (epoch {dataset.epoch_of(batch_index)}), micro-batch {micro}:")
            batch = dataset.read(batch_index, micro)
            for (file, group, row), ids, mask, docs in zip(
                dataset.origins(batch_index, micro), batch["input_ids"], batch["loss_mask"], batch["doc_ids"]
            ):
                print(
                    f"  {file} row group {group} row {row}: {int(docs[-1]) + 1} docs, "
                    f"{int(mask.sum())} loss tokens, ids {ids[:tokens].tolist()}"
                )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)

    def run() -> int:
        if args.show < 0 or args.tokens < 0:
            raise ValueError("--show and --tokens must be >= 0")
        # Checked here to name the flags: in the trainer, rank and world size come from the launcher.
        if args.world_size < 1:
            raise ValueError(f"--world_size must be >= 1, got {args.world_size}")
        if not 0 <= args.rank < args.world_size:
            raise ValueError(f"--rank {args.rank} must lie in [0, --world_size {args.world_size})")
        _report(_open(args), args.show, args.tokens)
        return 0

    return run_cli("stateful_parquet_dataset.py", run)


if __name__ == "__main__":
    sys.exit(main())
