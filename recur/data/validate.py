"""Checks that a packed dataset directory honours the format contract (docs/data.md), with errors that
name the offending file, row group and row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recur.data.shard_writer import FORMAT_VERSION, MANIFEST_NAME, file_sha256

COLUMN_TYPES = {"input_ids": pa.int32(), "loss_mask": pa.uint8(), "doc_starts": pa.int32()}
MANIFEST_KEYS = {
    "format_version": int,
    "seq_len": int,
    "row_len": int,
    "tokenizer": dict,
    "num_rows": int,
    "num_tokens": int,
    "num_shards": int,
    "shards": list,
    "packing": dict,
    "sources": list,
}
TOKENIZER_KEYS = ("name", "vocab_size", "pad_id", "eos_id", "fingerprint")


def read_manifest(directory: str | Path) -> dict:
    """Load and structurally check manifest.json (no shard access)."""
    path = Path(directory) / MANIFEST_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"packed dataset directory '{directory}' does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: '{directory}' is not a packed dataset (no manifest)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise ValueError(f"{path}: key '{key}' missing or not of type {kind.__name__}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {manifest['format_version']}, expected {FORMAT_VERSION}")
    if manifest["row_len"] != manifest["seq_len"] + 1:
        raise ValueError(f"{path}: row_len {manifest['row_len']} != seq_len + 1 ({manifest['seq_len'] + 1})")
    missing = [key for key in TOKENIZER_KEYS if key not in manifest["tokenizer"]]
    if missing:
        raise ValueError(f"{path}: tokenizer entry lacks {missing}")
    if len(manifest["shards"]) != manifest["num_shards"]:
        raise ValueError(f"{path}: num_shards {manifest['num_shards']} but {len(manifest['shards'])} shards listed")
    return manifest


def _list_column(table: pa.Table, name: str, where: str) -> pa.ListArray:
    column = table.column(name).combine_chunks()
    if column.null_count or column.values.null_count:
        raise ValueError(f"{where}: column '{name}' contains nulls")
    return column


def _first_bad(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if len(hits) else None


def check_row_group(table: pa.Table, row_len: int, vocab_size: int, where: str, first_row: int) -> None:
    """Vectorised content checks of one row group; `first_row` is its first row's index in the shard."""
    lists = {name: _list_column(table, name, where) for name in COLUMN_TYPES}
    for name in ("input_ids", "loss_mask"):
        lengths = np.diff(lists[name].offsets.to_numpy())
        bad = _first_bad(lengths != row_len)
        if bad is not None:
            raise ValueError(
                f"{where}, row {first_row + bad}: '{name}' has length {lengths[bad]}, expected row_len {row_len} "
                "(seq_len mismatch?)"
            )
    ids = lists["input_ids"].values.to_numpy()
    bad = _first_bad((ids < 0) | (ids >= vocab_size))
    if bad is not None:
        raise ValueError(
            f"{where}, row {first_row + bad // row_len}: token id {ids[bad]} at position {bad % row_len} "
            f"is outside the vocabulary [0, {vocab_size})"
        )
    mask = lists["loss_mask"].values.to_numpy()
    bad = _first_bad(mask > 1)
    if bad is not None:
        raise ValueError(f"{where}, row {first_row + bad // row_len}: loss_mask value {mask[bad]} is not 0/1")
    starts_list = lists["doc_starts"]
    offsets, starts = starts_list.offsets.to_numpy(), starts_list.values.to_numpy()
    bad = _first_bad(np.diff(offsets) < 1)
    if bad is not None:
        raise ValueError(f"{where}, row {first_row + bad}: doc_starts is empty, expected it to begin with 0")
    bad = _first_bad(starts[offsets[:-1]] != 0)
    if bad is not None:
        raise ValueError(f"{where}, row {first_row + bad}: doc_starts does not begin with 0")
    # Within a row each start must exceed the previous one; the row boundaries reset to 0.
    row_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    not_first = np.ones(len(starts), dtype=bool)
    not_first[offsets[:-1]] = False
    bad = _first_bad(not_first[1:] & (np.diff(starts) <= 0) | (starts[1:] >= row_len))
    if bad is not None:
        raise ValueError(
            f"{where}, row {first_row + row_of[bad + 1]}: doc_starts must be strictly ascending and < row_len {row_len}"
        )


def open_shard(path: Path) -> pq.ParquetFile:
    """A shard opened with page checksum verification: a corrupted data page raises on read instead of
    decoding to wrong tokens (shards written before checksums were added read unverified)."""
    return pq.ParquetFile(path, page_checksum_verification=True)


def check_shard(path: Path, row_len: int, vocab_size: int, expected_rows: int | None, check_rows: bool) -> int:
    """Open one shard, check schema, row count and (optionally) every row group; return its row count."""
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} is missing")
    if path.stat().st_size == 0:
        raise ValueError(f"shard {path} is empty (0 bytes)")
    try:
        parquet = open_shard(path)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as error:
        raise ValueError(f"shard {path} is corrupt/truncated: {error}") from error
    for name, value_type in COLUMN_TYPES.items():
        if name not in schema.names:
            raise ValueError(f"shard {path} lacks required column '{name}' (has {schema.names})")
        column_type = schema.field(name).type
        if not pa.types.is_list(column_type) or column_type.value_type != value_type:
            raise ValueError(f"shard {path}: column '{name}' is {column_type}, expected list<{value_type}>")
    metadata = schema.metadata or {}
    stored_seq_len = metadata.get(b"recur.seq_len")
    if stored_seq_len is not None and int(stored_seq_len) + 1 != row_len:
        raise ValueError(
            f"shard {path} was written with seq_len {int(stored_seq_len)}, the manifest says {row_len - 1} "
            "(seq_len mismatch between shards)"
        )
    num_rows = parquet.metadata.num_rows
    if expected_rows is not None and num_rows != expected_rows:
        raise ValueError(f"shard {path} has {num_rows} rows, the manifest says {expected_rows}")
    if check_rows:
        first_row = 0
        for group in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(group, columns=list(COLUMN_TYPES))
            except (pa.ArrowException, OSError) as error:
                raise ValueError(f"shard {path} is corrupt/truncated: row group {group}: {error}") from error
            check_row_group(table, row_len, vocab_size, f"shard {path}, row group {group}", first_row)
            first_row += table.num_rows
    return num_rows


def check_sha256(path: Path, expected: str) -> None:
    """The full-content check of one shard (reads every byte): its sha256 must be the manifest's."""
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"shard {path}: sha256 differs from the manifest (expected {expected}, got {actual}; "
            "the file changed after packing)"
        )


def open_packed_dataset(directory: str | Path, check_rows: bool = True, verify_sha256: bool = False) -> dict:
    """Validate a packed dataset directory and return its manifest (`check_rows=False`: schema/counts only;
    `verify_sha256`: also every shard's digest against the manifest's, which reads all the data)."""
    manifest = read_manifest(directory)
    row_len, vocab_size = manifest["row_len"], manifest["tokenizer"]["vocab_size"]
    total = 0
    for entry in manifest["shards"]:
        path = Path(directory) / entry["file"]
        total += check_shard(path, row_len, vocab_size, entry["num_rows"], check_rows)
        if verify_sha256:
            check_sha256(path, entry["sha256"])
    if total != manifest["num_rows"]:
        raise ValueError(f"{Path(directory) / MANIFEST_NAME}: num_rows {manifest['num_rows']}, shards hold {total}")
    return manifest


def row_token_counts(table: pa.Table, pad_id: int) -> np.ndarray:
    """Non-pad tokens per row. Padding is the last doc_starts segment when it is all pad ids with loss 0
    (located by position, so a tokenizer whose pad id equals its EOS id is counted correctly)."""
    if table.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    # flatten() (unlike .values) honours slices, so sliced or taken tables are handled too.
    ids_list = table.column("input_ids").combine_chunks()
    row_len = len(ids_list[0])
    ids = ids_list.flatten().to_numpy().reshape(-1, row_len)
    mask = table.column("loss_mask").combine_chunks().flatten().to_numpy().reshape(-1, row_len)
    starts = table.column("doc_starts").combine_chunks()
    last_start = starts.flatten().to_numpy()[np.cumsum(starts.value_lengths().to_numpy()) - 1]
    positions = np.arange(row_len)
    tail = positions[None, :] >= last_start[:, None]
    is_pad_tail = ~np.any(tail & ((ids != pad_id) | (mask != 0)), axis=1)
    return np.where(is_pad_tail, last_start, row_len)
