"""Open a packed dataset directory (see DATA_FORMAT.md) and read whole row groups into numpy.

Opening validates what can be checked without decoding the data (manifest, shard files, parquet footers,
schemas, row counts); every row group read is checked for row length and ``doc_starts`` sanity, so a bad
shard produces an error naming the file and row group rather than a silently wrong batch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recur.data.shard_writer import MANIFEST_NAME, SCHEMA, RowBlock


def take_rows(block: RowBlock, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Gather rows (in the given order) with per-token document ids derived from ``doc_starts``."""
    n, row_len = len(rows), block.input_ids.shape[1]
    lo, hi = block.doc_offsets[rows], block.doc_offsets[rows + 1]
    counts = hi - lo
    # Flat index of every selected start, without a Python loop over rows.
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    starts = block.doc_starts[first + np.arange(int(counts.sum()))]
    boundary = np.zeros((n, row_len), dtype=np.int32)
    boundary[np.repeat(np.arange(n), counts), starts] = 1
    doc_ids = np.cumsum(boundary, axis=1, dtype=np.int32)
    doc_ids -= 1
    return {"input_ids": block.input_ids[rows], "loss_mask": block.loss_mask[rows], "doc_ids": doc_ids}


def concat_blocks(blocks: list[RowBlock]) -> RowBlock:
    if len(blocks) == 1:
        return blocks[0]
    shifts = np.cumsum([0] + [len(b.doc_starts) for b in blocks[:-1]])
    return RowBlock(
        np.concatenate([b.input_ids for b in blocks]),
        np.concatenate([b.loss_mask for b in blocks]),
        np.concatenate([b.doc_starts for b in blocks]),
        np.concatenate([[0]] + [b.doc_offsets[1:] + s for b, s in zip(blocks, shifts)]),
    )


def _fail(file: Path, what: str) -> ValueError:
    return ValueError(f"{file}: {what}")


def _list_values(table: pa.Table, name: str, file: Path, where: str, row_len: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of a list column; checks every row has ``row_len`` items when given."""
    column = table.column(name)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    where = f"{where} column '{name}'"
    if array.null_count:
        raise _fail(file, f"{where} has null rows")
    offsets = np.asarray(array.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if row_len is not None and not np.all(lengths == row_len):
        bad = int(np.argmax(lengths != row_len))
        raise _fail(file, f"{where}: row {bad} has {int(lengths[bad])} items, expected row_len {row_len}")
    values = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False)
    return values, offsets - offsets[0]


class PackedShards:
    """A validated packed dataset: its manifest, shard files and the table of all row groups."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST_NAME
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: packed dataset directory does not exist")
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: missing; expected a packed dataset directory with {MANIFEST_NAME}")
        try:
            self.manifest = json.loads(manifest_path.read_text())
            self.row_len = int(self.manifest["row_len"])
            shard_entries = list(self.manifest["shards"])
            files = [self.path / str(entry["file"]) for entry in shard_entries]
            expected_rows = [int(entry["num_rows"]) for entry in shard_entries]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise _fail(manifest_path, f"malformed manifest ({type(err).__name__}: {err}); expected row_len and shards")
        if "seq_len" in self.manifest and int(self.manifest["seq_len"]) + 1 != self.row_len:
            raise _fail(manifest_path, f"row_len {self.row_len} != seq_len {self.manifest['seq_len']} + 1")
        if not files:
            raise _fail(manifest_path, "lists no shards")
        group_shard, group_index, group_sizes = [], [], []
        for shard, (file, rows) in enumerate(zip(files, expected_rows)):
            metadata = self._check_shard(file, rows)
            for g in range(metadata.num_row_groups):
                group_shard.append(shard)
                group_index.append(g)
                group_sizes.append(metadata.row_group(g).num_rows)
        self.files = files
        self.group_shard = np.asarray(group_shard)
        self.group_index = np.asarray(group_index)
        self.group_sizes = np.asarray(group_sizes, dtype=np.int64)
        self.num_rows = int(self.group_sizes.sum())
        self.fingerprint = self._fingerprint(shard_entries)
        self._handles: dict[int, pq.ParquetFile] = {}

    def _check_shard(self, file: Path, expected_rows: int) -> pq.FileMetaData:
        if not file.is_file():
            raise FileNotFoundError(f"{file}: shard listed in {self.path / MANIFEST_NAME} does not exist")
        try:
            metadata = pq.read_metadata(file)
            schema = metadata.schema.to_arrow_schema()
        except (pa.ArrowException, OSError) as err:
            raise _fail(file, f"not a readable parquet file (empty, truncated or corrupt): {err}")
        for field in SCHEMA:
            if field.name not in schema.names:
                raise _fail(file, f"missing column '{field.name}' ({field.type}); has {schema.names}")
            found = schema.field(field.name).type
            # Compare list-ness and value type only: writers name the list item field differently.
            if not (pa.types.is_list(found) and found.value_type == field.type.value_type):
                raise _fail(file, f"column '{field.name}' has type {found}, expected {field.type}")
        if metadata.num_rows == 0:
            raise _fail(file, "shard has no rows")
        if metadata.num_rows != expected_rows:
            raise _fail(file, f"has {metadata.num_rows} rows but {MANIFEST_NAME} says {expected_rows}")
        return metadata

    def _fingerprint(self, shard_entries: list[dict]) -> str:
        # Content hashes from the manifest plus the row-group layout, which decides the order too.
        identity = {
            "row_len": self.row_len,
            "shards": [[e["file"], int(e["num_rows"]), e.get("sha256")] for e in shard_entries],
            "row_groups": self.group_sizes.tolist(),
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]

    def __getstate__(self) -> dict:
        # Open file handles do not survive pickling into DataLoader workers; they reopen lazily there.
        return {**self.__dict__, "_handles": {}}

    def read_group(self, group: int) -> RowBlock:
        shard, index = int(self.group_shard[group]), int(self.group_index[group])
        file, where = self.files[shard], f"row group {index}"
        try:
            handle = self._handles.get(shard)
            if handle is None:
                handle = self._handles[shard] = pq.ParquetFile(file)
            table = handle.read_row_group(index, columns=SCHEMA.names)
        except (pa.ArrowException, OSError) as err:
            raise _fail(file, f"{where} cannot be read (truncated or corrupt): {err}")
        ids, _ = _list_values(table, "input_ids", file, where, self.row_len)
        mask, _ = _list_values(table, "loss_mask", file, where, self.row_len)
        starts, offsets = _list_values(table, "doc_starts", file, where, None)
        self._check_doc_starts(starts, offsets, file, where)
        return RowBlock(ids.reshape(-1, self.row_len), mask.reshape(-1, self.row_len), starts, offsets)

    def _check_doc_starts(self, starts: np.ndarray, offsets: np.ndarray, file: Path, where: str) -> None:
        if np.any(np.diff(offsets) == 0) or np.any(starts[offsets[:-1]] != 0):
            raise _fail(file, f"{where}: every doc_starts list must begin with 0")
        row_start = np.zeros(len(starts), dtype=bool)
        row_start[offsets[:-1]] = True
        ascending = np.diff(starts, prepend=-1) > 0
        if np.any(starts >= self.row_len) or not np.all(ascending | row_start):
            raise _fail(file, f"{where}: doc_starts must be ascending offsets below row_len {self.row_len}")

    def read_groups(self, groups: np.ndarray) -> RowBlock:
        return concat_blocks([self.read_group(int(g)) for g in groups])

    def origin(self, group: int) -> tuple[str, int]:
        """(shard file name, row group index within the shard) of a global row group id."""
        return self.files[int(self.group_shard[group])].name, int(self.group_index[group])
