"""Loader cost per rank across world sizes, against a raw pyarrow read and the retrofitting reference loader.

    python bench/bench_loader.py [--rows 40960] [--shards 8] [--row_group_size 64] [--shuffle_window 1]
                                 [--rank_batch 32] [--world_sizes 1,8,64,512] [--out bench/results/loader_scaling.json]

A rank decodes whole row groups, so it cannot read fewer rows per epoch than one group: rank 0 of
W = 512 gets 80 rows of each epoch of the default 40,960, hence the default groups of 64 rows.

Writes synthetic packed shards to a temp dir, then measures in this one process:
  raw pyarrow  every row group read in storage order and flattened to numpy (no shuffle, no validation)
  retrofit     retrofitting-recurrence's stateful_parquet_dataset.py, one epoch on one rank (see
               bench/loader_retrofit.py; skipped, and said so, when its file is absent)
  sweep        rank 0 of W for each W, simulated in this process: global batch G = rank_batch * W, whole
               epochs until rank 0 has delivered at least rows / 8 rows; int64 input_ids, loss_mask, doc_ids
  mixing       distinct row groups and shards per global batch (W = 1) for G = rank_batch and each sweep G
Rates are per wall-clock second and per CPU-second of the process (all its threads: the prefetch thread
too); the CPU figures are what the loader costs and stay meaningful on a busy machine.
--loader_root DIR imports the loader from another checkout (e.g. a worktree of an older commit) instead.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_960)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--row_group_size", type=int, default=64)
    parser.add_argument("--shuffle_window", type=int, default=1)
    parser.add_argument("--rank_batch", type=int, default=32, help="rows per rank per global batch")
    parser.add_argument("--world_sizes", default="1,8,64,512")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the least CPU counts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loader_scaling.json")
    parser.add_argument("--loader_root", type=Path, help="checkout to import recur.data.loader from")
    args = parser.parse_args(argv)
    try:
        args.world_sizes = [int(w) for w in args.world_sizes.split(",")]
    except ValueError:
        parser.error(f"--world_sizes {args.world_sizes!r}: expected comma-separated integers like 1,8,64")
    if (
        min(
            args.world_sizes
            + [args.rows, args.seq_len, args.shards, args.row_group_size, args.rank_batch, args.repeats]
        )
        < 1
    ):
        parser.error(
            "--rows, --seq_len, --shards, --row_group_size, --rank_batch, --repeats and --world_sizes must be >= 1"
        )
    if args.loader_root is not None and not (args.loader_root / "recur" / "data" / "loader.py").is_file():
        parser.error(f"--loader_root {args.loader_root}: expected a checkout with recur/data/loader.py")
    return args


def cpu_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start"


def timed(repeats: int, make_run: Callable[[], Callable[[], int]]) -> dict[str, float]:
    """The best (least CPU) of ``repeats`` runs, each made fresh: the machine may be shared."""
    best = None
    for _ in range(repeats):
        run = make_run()
        wall, cpu = time.perf_counter(), time.process_time()
        tokens = run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if best is None or cpu * 1e3 / (tokens / 1e6) < best["cpu_ms_per_m_tokens"]:
            best = {
                "tokens": tokens,
                "tokens_per_s_wall": tokens / wall,
                "tokens_per_cpu_s": tokens / cpu,
                "cpu_ms_per_m_tokens": cpu * 1e3 / (tokens / 1e6),
            }
    return best


def raw_read_tokens(path: Path) -> int:
    from recur.data.shard_writer import SCHEMA

    tokens = 0
    for file in sorted(path.glob("shard-*.parquet")):
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            # The loader's own read call (single-threaded decode of the three columns), minus everything else.
            table = parquet.read_row_group(group, columns=SCHEMA.names, use_threads=False)
            for name in SCHEMA.names:
                values = table.column(name).combine_chunks().flatten().to_numpy()
                tokens += len(values) if name == "input_ids" else 0
    return tokens


def sweep_point(loader_cls, path: Path, world_size: int, args: argparse.Namespace, num_rows: int) -> dict:
    """Rank 0 of ``world_size`` for whole epochs until it has delivered >= rows / 8 rows."""
    g = args.rank_batch * world_size
    epochs = math.ceil((num_rows / 8) / (num_rows / world_size))
    steps = math.ceil(epochs * num_rows / g)
    decoded: list[int] = []

    def make_run() -> Callable[[], int]:
        dataset = loader_cls(path, g, rank=0, world_size=world_size, shuffle_window=args.shuffle_window)
        read_group, sizes = dataset.shards.read_group, dataset.shards.group_sizes
        decoded.clear()
        dataset.shards.read_group = lambda group: decoded.append(int(sizes[group])) or read_group(group)
        return lambda: sum(batch["input_ids"].numel() for _, batch in zip(range(steps), dataset))

    result = timed(args.repeats, make_run)
    delivered_rows = result["tokens"] // (args.seq_len + 1)
    return {
        "world_size": world_size,
        "global_batch_size": g,
        "epochs": epochs,
        "steps": steps,
        **result,
        "rows_decoded_per_row_delivered": sum(decoded) / delivered_rows,
    }


def mixing(loader_cls, path: Path, global_batch_size: int, shuffle_window: int, num_rows: int) -> dict:
    """Mean distinct row groups and shards per global batch over (up to 64 of) the first epoch's batches."""
    dataset = loader_cls(path, global_batch_size, shuffle_window=shuffle_window)
    batches = max(1, min(64, num_rows // global_batch_size))
    groups, shards = [], []
    for b in range(batches):
        origins = dataset.origins(b)
        groups.append(len({(f, g) for f, g, _ in origins}))
        shards.append(len({f for f, _, _ in origins}))
    return {
        "global_batch_size": global_batch_size,
        "batches": batches,
        "row_groups_per_batch": float(np.mean(groups)),
        "shards_per_batch": float(np.mean(shards)),
    }


def _import_recur_from(root: Path) -> None:
    """Import `root`/recur as the `recur` package of this process (before anything imported ours)."""
    package = root / "recur"
    if "recur" in sys.modules:  # its modules would stay ours beside the other checkout's package
        raise RuntimeError("--loader_root: recur is already imported; call this before anything imports it")
    if not (package / "__init__.py").is_file():
        print(f"bench_loader.py: error: --loader_root {root} has no recur/ package", file=sys.stderr)
        raise SystemExit(2)
    spec = importlib.util.spec_from_file_location(
        "recur", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["recur"] = module
    spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.loader_root:  # the loader under test from another checkout: its recur package replaces ours
        _import_recur_from(args.loader_root.resolve())
    loader_cls = importlib.import_module("recur.data.loader").StatefulParquetDataset
    from bench.loader_data import write_reference_copy, write_synthetic
    from bench.loader_retrofit import load_reference, reference_epoch_tokens
    from bench.perf_common import markdown_table
    from recur.data.shard_writer import write_atomic_bytes

    report: dict = {
        "command": " ".join(["python", "bench/bench_loader.py"] + (argv or sys.argv[1:])),
        "cpu": cpu_line(),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        path, reference_path = Path(tmp) / "packed", Path(tmp) / "reference"
        path.mkdir()
        reference_path.mkdir()
        write_synthetic(path, args.rows, args.seq_len, -(-args.rows // args.shards), args.row_group_size)
        module, missing = load_reference()
        if args.seq_len not in (1024, 2048):  # its collator asserts rows of 1025 or 2049 tokens
            module, missing = (
                None,
                f"the reference reads rows of 1024 or 2048 tokens only, not --seq_len {args.seq_len}",
            )
        if module is not None:
            write_reference_copy(path, reference_path)
        raw_read_tokens(path)  # warm the page cache so every measurement reads from memory
        print(report["cpu"])
        report["raw_pyarrow"] = timed(args.repeats, lambda: lambda: raw_read_tokens(path))
        if module is None:
            print(f"retrofitting reference skipped: {missing}")
            report["retrofitting_reference"] = {"skipped": missing}
        else:
            report["retrofitting_reference"] = timed(
                args.repeats, lambda: lambda: reference_epoch_tokens(module, reference_path, args.rows, args.rank_batch)
            )
        report["sweep"] = [sweep_point(loader_cls, path, w, args, args.rows) for w in args.world_sizes]
        sizes = sorted({args.rank_batch} | {p["global_batch_size"] for p in report["sweep"]})
        report["mixing"] = [mixing(loader_cls, path, g, args.shuffle_window, args.rows) for g in sizes]
    w1 = next((p for p in report["sweep"] if p["world_size"] == 1), None)
    wmax = max(report["sweep"], key=lambda p: p["world_size"])
    checks = {}
    if w1 is not None:
        checks[f"cpu_ms_per_m_tokens_w{wmax['world_size']}_over_w1"] = (
            wmax["cpu_ms_per_m_tokens"] / w1["cpu_ms_per_m_tokens"]
        )
        if "tokens" in report["retrofitting_reference"]:
            for rate in ("tokens_per_s_wall", "tokens_per_cpu_s"):
                checks[f"w1_{rate}_over_retrofit"] = w1[rate] / report["retrofitting_reference"][rate]
    report["checks"] = checks
    rows = [
        [
            "raw pyarrow, storage order",
            "-",
            "-",
            f"{report['raw_pyarrow']['tokens_per_s_wall'] / 1e6:.1f}",
            f"{report['raw_pyarrow']['cpu_ms_per_m_tokens']:.0f}",
            "-",
        ]
    ]
    if "tokens" in report["retrofitting_reference"]:
        ref = report["retrofitting_reference"]
        rows.append(
            [
                "retrofitting-recurrence loader, W = 1",
                args.rank_batch,
                "-",
                f"{ref['tokens_per_s_wall'] / 1e6:.1f}",
                f"{ref['cpu_ms_per_m_tokens']:.0f}",
                "-",
            ]
        )
    for p in report["sweep"]:
        rows.append(
            [
                f"loader, rank 0 of W = {p['world_size']}",
                p["global_batch_size"],
                p["epochs"],
                f"{p['tokens_per_s_wall'] / 1e6:.2f}",
                f"{p['cpu_ms_per_m_tokens']:.0f}",
                f"{p['rows_decoded_per_row_delivered']:.2f}",
            ]
        )
    print(
        markdown_table(
            ["config", "G", "epochs", "M tokens/s (wall)", "CPU ms per M tokens", "rows decoded per row delivered"],
            rows,
        )
    )
    print(
        markdown_table(
            ["G", "row groups per batch", "shards per batch"],
            [
                [m["global_batch_size"], f"{m['row_groups_per_batch']:.1f}", f"{m['shards_per_batch']:.1f}"]
                for m in report["mixing"]
            ],
        )
    )
    print(json.dumps(checks))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_bytes(args.out, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
