"""Writing packed datasets: parquet shards of fixed-length rows plus manifest.json, all written atomically.

Every file is written under a temporary name and renamed into place; the manifest is written last, so a
directory with a manifest always describes complete shards.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recur import atomic

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("doc_starts", pa.list_(pa.int32())),
    ]
)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.parquet"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RowBlock:
    """A block of packed rows: dense [n, row_len] ids/mask and ragged doc_starts (flat values + offsets)."""

    input_ids: np.ndarray
    loss_mask: np.ndarray
    doc_starts: np.ndarray
    doc_offsets: np.ndarray

    def __len__(self) -> int:
        return len(self.input_ids)

    def to_table(self) -> pa.Table:
        n, row_len = self.input_ids.shape
        dense_offsets = pa.array(np.arange(0, (n + 1) * row_len, row_len, dtype=np.int32))
        return pa.Table.from_arrays(
            [
                pa.ListArray.from_arrays(dense_offsets, pa.array(self.input_ids.reshape(-1), pa.int32())),
                pa.ListArray.from_arrays(dense_offsets, pa.array(self.loss_mask.reshape(-1), pa.uint8())),
                pa.ListArray.from_arrays(pa.array(self.doc_offsets, pa.int32()), pa.array(self.doc_starts, pa.int32())),
            ],
            schema=SCHEMA,
        )


def write_atomic_bytes(path: Path, data: bytes) -> None:
    atomic.write_bytes(path, data)


class ShardWriter:
    """Buffers row tables and writes `rows_per_shard`-row shards with fixed-size row groups."""

    def __init__(self, out_dir: Path, seq_len: int, rows_per_shard: int, row_group_size: int) -> None:
        if rows_per_shard < 1 or row_group_size < 1:
            raise ValueError(
                f"--rows_per_shard and --row_group_size must be >= 1, got {rows_per_shard} and {row_group_size}"
            )
        self.out_dir, self.seq_len = out_dir, seq_len
        self.rows_per_shard, self.row_group_size = rows_per_shard, row_group_size
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.shards: list[dict] = []

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> list[dict]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.shards

    def _flush(self, num_rows: int) -> None:
        buffered = pa.concat_tables(self.pending)
        shard, rest = buffered.slice(0, num_rows), buffered.slice(num_rows)
        self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        path = self.out_dir / shard_name(len(self.shards))
        # seq_len in the parquet metadata lets a lone shard be checked against its dataset.
        table = shard.combine_chunks().replace_schema_metadata({"recur.seq_len": str(self.seq_len)})
        # Page CRCs: readers verify them (recur.data.validate.open_shard), so a flipped bit fails loudly.
        with atomic.atomic_path(path) as tmp:
            pq.write_table(table, tmp, row_group_size=self.row_group_size, write_page_checksum=True)
        self.shards.append({"file": path.name, "num_rows": num_rows, "sha256": file_sha256(path)})


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse, before anything is read or written, an `out_dir` that would lose data: an existing dataset
    without `overwrite`, or a non-empty directory that is not a packed dataset."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"--out_dir {out_dir} exists and is not a directory")
    if (out_dir / MANIFEST_NAME).exists():
        if not overwrite:
            raise ValueError(
                f"{out_dir} already holds a packed dataset ({out_dir / MANIFEST_NAME}); pass --overwrite to replace it"
            )
    elif any(out_dir.iterdir()):
        raise ValueError(f"--out_dir {out_dir} is not empty and holds no packed dataset; refusing to replace it")


def staged_dir(out_dir: Path) -> AbstractContextManager[Path]:
    """Build a dataset in a sibling temporary directory; only when the block succeeds does it replace
    `out_dir` (two renames). On any failure the temporary directory is removed and `out_dir` — an older
    dataset, or nothing — is left exactly as it was (recur.atomic.atomic_dir)."""
    return atomic.atomic_dir(out_dir)


def finish_dataset(out_dir: Path, manifest: dict) -> Path:
    """Write manifest.json atomically: the last file of a dataset, so its presence means complete."""
    path = out_dir / MANIFEST_NAME
    write_atomic_bytes(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def build_manifest(
    *,
    seq_len: int,
    tokenizer: dict,
    shards: list[dict],
    num_tokens: int,
    packing: dict,
    sources: list[dict],
    created_by: str,
    **extra: object,
) -> dict:
    if not shards:
        raise ValueError("no rows were produced; the inputs hold no tokens")
    manifest = {
        "format_version": FORMAT_VERSION,
        "seq_len": seq_len,
        "row_len": seq_len + 1,
        "tokenizer": tokenizer,
        "num_rows": sum(shard["num_rows"] for shard in shards),
        "num_tokens": int(num_tokens),
        "num_shards": len(shards),
        "shards": shards,
        "packing": packing,
        "sources": sources,
        "created_by": created_by,
    }
    manifest.update(extra)
    return manifest
