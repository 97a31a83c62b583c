"""Synthetic packed shards for bench/bench_loader.py, and a copy in the retrofitting reference's columns.

The reference loader (retrofitting-recurrence's stateful_parquet_dataset.py) reads ``input_ids`` and
``attention_mask`` list columns, so the same rows are also written that way, with the same row groups.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from recur.data.shard_writer import RowBlock, ShardWriter, build_manifest, finish_dataset

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


def write_synthetic(out: Path, rows: int, seq_len: int, rows_per_shard: int, row_group_size: int) -> None:
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 50_000, size=1 << 22, dtype=np.int32)
    writer = ShardWriter(out, seq_len, rows_per_shard=rows_per_shard, row_group_size=row_group_size)
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


def write_reference_copy(packed: Path, out: Path) -> None:
    """The packed shards' rows as ``input_ids`` + ``attention_mask`` (the loss mask), same row groups."""
    for shard in sorted(packed.glob("shard-*.parquet")):
        metadata = pq.read_metadata(shard)
        table = pq.read_table(shard)
        copy = pa.table({"input_ids": table.column("input_ids"), "attention_mask": table.column("loss_mask")})
        pq.write_table(copy, out / shard.name, row_group_size=metadata.row_group(0).num_rows)
