"""Throughput of the shuffling, stateful parquet loader vs a raw sequential pyarrow read of the same files.

    python bench/bench_loader.py [--rows 100000] [--seq_len 2048] [--global_batch_size 64]

Writes synthetic packed shards to a temp dir, then measures in this one process:
  reference  every row group read in storage order with pyarrow and flattened to numpy (no shuffle, no
             validation, no torch)
  loader     one epoch of StatefulParquetDataset (shuffle on, W=1): int64 input_ids, loss_mask, doc_ids tensors
  loader W=8 rank 0 of 8: the same decoding work (every rank reads every row group), 1/8 of the rows delivered
Rates are given per wall-clock second and per CPU-second of the process; ratios use CPU-seconds so that
they hold on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from tqdm import tqdm

# Run as a plain script from any directory: make the repository's package importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recur.data.loader import StatefulParquetDataset  # noqa: E402
from recur.data.shard_writer import SCHEMA, RowBlock, ShardWriter, build_manifest, finish_dataset  # noqa: E402

BLOCK_ROWS = 4096


def synthetic_block(rng: np.random.Generator, pool: np.ndarray, rows: int, row_len: int) -> RowBlock:
    # Slices of one random pool at random offsets: realistic-entropy tokens without generating each one.
    starts = rng.integers(0, len(pool) - row_len, size=rows)
    ids = pool[starts[:, None] + np.arange(row_len)[None, :]]
    docs = rng.integers(1, 6, size=rows)
    doc_starts = [np.concatenate([[0], np.sort(rng.choice(row_len - 1, size=d - 1, replace=False) + 1)]) for d in docs]
    offsets = np.concatenate([[0], np.cumsum(docs)])
    mask = np.ones((rows, row_len), dtype=np.uint8)
    mask[:, :1] = 0
    return RowBlock(ids, mask, np.concatenate(doc_starts).astype(np.int32), offsets)


def write_synthetic(out: Path, rows: int, seq_len: int) -> None:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 50_000, size=1 << 22, dtype=np.int32)
    writer = ShardWriter(out, seq_len, rows_per_shard=16 * 1024, row_group_size=1024)
    for lo in tqdm(range(0, rows, BLOCK_ROWS), desc="writing shards", unit="block"):
        writer.add(synthetic_block(rng, pool, min(BLOCK_ROWS, rows - lo), seq_len + 1).to_table())
    manifest = build_manifest(
        seq_len=seq_len,
        tokenizer={"name": "synthetic", "vocab_size": 50_000, "pad_id": 0, "eos_id": 1, "fingerprint": "bench"},
        shards=writer.close(),
        num_tokens=rows * (seq_len + 1),
        packing={"mode": "concat", "efficiency": 1.0},
        sources=[],
        created_by="bench/bench_loader.py",
    )
    finish_dataset(out, manifest)


def raw_read_tokens(path: Path) -> int:
    tokens = 0
    for file in sorted(path.glob("shard-*.parquet")):
        parquet = pq.ParquetFile(file)
        for group in range(parquet.num_row_groups):
            # The loader's own read call (single-threaded decode of the three columns), minus everything else.
            table = parquet.read_row_group(group, columns=SCHEMA.names, use_threads=False)
            ids = table.column("input_ids").combine_chunks().flatten().to_numpy()
            table.column("loss_mask").combine_chunks().flatten().to_numpy()
            table.column("doc_starts").combine_chunks().flatten().to_numpy()
            tokens += len(ids)
    return tokens


def loader_tokens(path: Path, global_batch_size: int, world_size: int) -> int:
    dataset = StatefulParquetDataset(path, global_batch_size, rank=0, world_size=world_size, infinite=False)
    return sum(batch["input_ids"].numel() for batch in dataset)


def timed(label: str, run, baseline: float | None = None) -> float:
    """Print tokens/s per wall-clock second and per CPU-second of this process (all its threads).

    The CPU-second rate is what the loader costs; the wall rate also reflects how busy the machine is.
    Ratios compare CPU-second rates, which stay meaningful on a shared machine.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = tokens / cpu
    ratio = "" if baseline is None else f"  ({rate / baseline:.2f}x reference)"
    print(
        f"{label:<44} {tokens / 1e6:7.1f} M tokens  {tokens / wall / 1e6:6.1f} M tokens/s wall  "
        f"{rate / 1e6:6.1f} M tokens/CPU-s{ratio}"
    )
    return rate

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--seq_len", type=int, default=2048)
    parser.add_argument("--global_batch_size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        path = Path(tmp) / "packed"
        path.mkdir()
        write_synthetic(path, args.rows, args.seq_len)
        raw_read_tokens(path)  # warm the page cache so both measurements read from memory
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
        reference = timed("reference: raw pyarrow, storage order", lambda: raw_read_tokens(path))
        timed("loader: shuffled, W=1", lambda: loader_tokens(path, args.global_batch_size, 1), reference)
        timed(
            "loader: shuffled, rank 0 of W=8 (delivered)",
            lambda: loader_tokens(path, args.global_batch_size, 8),
            reference,
        )


if __name__ == "__main__":
    main()
