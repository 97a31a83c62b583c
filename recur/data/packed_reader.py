"""Open a packed dataset directory (format: docs/data.md), read whole row groups into numpy, gather rows."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recur.data.shard_writer import MANIFEST_NAME, SCHEMA
from recur.data.validate import check_row_group, open_packed_dataset, open_shard


@dataclass(frozen=True)
class DecodedGroup:
    """A row group ready to gather rows from, each array [rows, row_len]."""

    input_ids: np.ndarray  # int32, as stored
    loss_mask: np.ndarray  # uint8
    doc_ids: np.ndarray  # document index of each token within its row, smallest unsigned dtype that fits


def _doc_ids(starts: np.ndarray, offsets: np.ndarray, row_len: int) -> np.ndarray:
    """Per-token document index within its row, for rows with these ``doc_starts``, as [rows, row_len].

    Made once per decoded group, whole-array, on the decoding thread: gathering then copies it like the
    tokens. Each document's index is repeated over its length; validation on read guarantees that every
    row's starts begin with 0 and ascend below row_len, so the lengths of a row add up to row_len.
    """
    counts = np.diff(offsets)
    ends = np.append(starts[1:], row_len)
    ends[offsets[1:] - 1] = row_len  # a row's last document runs to the end of the row
    index = np.arange(len(starts)) - np.repeat(offsets[:-1], counts)
    return np.repeat(index.astype(np.min_scalar_type(int(counts.max()))), ends - starts).reshape(len(counts), row_len)


def take_rows(groups_by_id: dict[int, DecodedGroup], groups: np.ndarray, within: np.ndarray) -> dict[str, np.ndarray]:
    """Gather rows (row ``within[i]`` of decoded group ``groups[i]``) in the given order.

    Each output array is one ``concatenate`` of single-row views, widening the dtype on the way: a batch
    usually takes one row from each of many groups (lanes), where a fancy-indexed copy per group would
    cost more Python than copying. ``input_ids`` come out as int64, the dtype the model embeds;
    ``doc_ids`` as int32.
    """
    decoded = [groups_by_id[g] for g in groups.tolist()]
    rows = within.tolist()
    out = {}
    for name, dtype in (("input_ids", np.int64), ("loss_mask", np.uint8), ("doc_ids", np.int32)):
        views = [getattr(d, name)[r : r + 1] for d, r in zip(decoded, rows)]
        out[name] = np.concatenate(views, dtype=dtype)
    return out


def _flat_values(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, row offsets) of a list column, without per-row Python objects."""
    array = table.column(name).combine_chunks()
    offsets = np.asarray(array.offsets, dtype=np.int64)
    return array.flatten().to_numpy(), offsets - offsets[0]


class PackedShards:
    """A validated packed dataset: its manifest, shard files and the table of all row groups.

    Opening runs ``open_packed_dataset(check_rows=False)`` (manifest, shard files, schemas, row counts);
    row contents are checked by ``check_row_group`` as each row group is read, so a bad shard fails with
    an error naming the file and row group the first time it is touched, at no extra pass over the data.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = open_packed_dataset(self.path, check_rows=False)
        self.row_len = int(self.manifest["row_len"])
        self.vocab_size = int(self.manifest["tokenizer"]["vocab_size"])
        self.files = [self.path / entry["file"] for entry in self.manifest["shards"]]
        group_shard, group_index, group_first_row, group_sizes = [], [], [], []
        for shard, file in enumerate(self.files):
            metadata = pq.read_metadata(file)
            first_row = 0
            for g in range(metadata.num_row_groups):
                rows = metadata.row_group(g).num_rows
                if rows:  # an empty row group holds nothing to read or order
                    group_shard.append(shard)
                    group_index.append(g)
                    group_first_row.append(first_row)
                    group_sizes.append(rows)
                first_row += rows
        if not group_sizes:
            raise ValueError(f"{self.path / MANIFEST_NAME}: the dataset holds no rows")
        self.group_shard = np.asarray(group_shard)
        self.group_index = np.asarray(group_index)
        self.group_first_row = np.asarray(group_first_row)
        self.group_sizes = np.asarray(group_sizes, dtype=np.int64)
        self.num_rows = int(self.group_sizes.sum())
        self.fingerprint = self._fingerprint(self.manifest["shards"])
        self._handles: dict[int, pq.ParquetFile] = {}
        self._handles_pid = os.getpid()

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

    def _handle(self, shard: int) -> pq.ParquetFile:
        if self._handles_pid != os.getpid():
            # Forked workers must not share open files (and their positions) with the parent.
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open_shard(self.files[shard])
        return handle

    def read_group(self, group: int) -> DecodedGroup:
        """Decode and check one row group (by global id); a bad one fails naming its shard and row group."""
        shard, index = int(self.group_shard[group]), int(self.group_index[group])
        file = self.files[shard]
        try:
            # Single-threaded decode: parallelism comes from the prefetch thread and DataLoader workers;
            # pyarrow's own pool in every rank and worker process would oversubscribe the CPUs.
            table = self._handle(shard).read_row_group(index, columns=SCHEMA.names, use_threads=False)
        except (pa.ArrowException, OSError) as err:
            raise ValueError(f"shard {file} is corrupt/truncated: row group {index}: {err}") from err
        where = f"shard {file}, row group {index}"
        check_row_group(table, self.row_len, self.vocab_size, where, int(self.group_first_row[group]))
        ids, _ = _flat_values(table, "input_ids")
        mask, _ = _flat_values(table, "loss_mask")
        starts, offsets = _flat_values(table, "doc_starts")
        return DecodedGroup(
            ids.reshape(-1, self.row_len), mask.reshape(-1, self.row_len), _doc_ids(starts, offsets, self.row_len)
        )

    def origin(self, group: int) -> tuple[str, int]:
        """(shard file name, row group index within the shard) of a global row group id."""
        return self.files[int(self.group_shard[group])].name, int(self.group_index[group])
