"""Open a packed dataset directory (see DATA_FORMAT.md), read whole row groups into numpy, gather rows."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recur.data.grouping import runs
from recur.data.shard_writer import MANIFEST_NAME, SCHEMA, RowBlock
from recur.data.validate import check_row_group, open_packed_dataset, open_shard


def _selected_doc_starts(block: RowBlock, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``doc_starts`` of the selected rows, concatenated; how many starts each row has)."""
    lo = block.doc_offsets[rows]
    counts = block.doc_offsets[rows + 1] - lo
    # Flat index of every selected start, without a Python loop over rows.
    first = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return block.doc_starts[first + np.arange(int(counts.sum()))], counts


def take_rows(blocks: dict[int, RowBlock], groups: np.ndarray, within: np.ndarray) -> dict[str, np.ndarray]:
    """Gather rows (row ``within[i]`` of decoded group ``groups[i]``) in the given order.

    Gathering from each block in place avoids concatenating row groups, which would copy every token
    once more than needed. ``input_ids`` come out as int64, the dtype the model embeds; ``doc_ids`` is
    the per-token document index within its row (cumulative count of doc starts - 1).
    """
    row_len = next(iter(blocks.values())).input_ids.shape[1]
    shape = (len(groups), row_len)
    input_ids = np.empty(shape, dtype=np.int64)
    loss_mask = np.empty(shape, dtype=np.uint8)
    doc_ids = np.zeros(shape, dtype=np.int32)
    for g, selected in runs(groups):
        block, local = blocks[g], within[selected]
        input_ids[selected] = block.input_ids[local]
        loss_mask[selected] = block.loss_mask[local]
        starts, counts = _selected_doc_starts(block, local)
        doc_ids[np.repeat(selected, counts), starts] = 1
    np.cumsum(doc_ids, axis=1, out=doc_ids)
    doc_ids -= 1
    return {"input_ids": input_ids, "loss_mask": loss_mask, "doc_ids": doc_ids}


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

    def read_group(self, group: int) -> RowBlock:
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
        return RowBlock(ids.reshape(-1, self.row_len), mask.reshape(-1, self.row_len), starts, offsets)

    def origin(self, group: int) -> tuple[str, int]:
        """(shard file name, row group index within the shard) of a global row group id."""
        return self.files[int(self.group_shard[group])].name, int(self.group_index[group])
