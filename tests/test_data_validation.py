import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recur.data.packing import pack_dataset
from recur.data.validate import open_packed_dataset


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "data"
    pack_dataset(
        out, tokenizer="byte", seq_len=31, tasks=["copy", "parity"], num_docs=400, rows_per_shard=100, row_group_size=32
    )
    return out


@pytest.fixture
def data(good, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(good, copy)
    return copy


SHARD = "shard-00001.parquet"


def _rewrite(path, table, **metadata):
    pq.write_table(table.replace_schema_metadata(metadata or table.schema.metadata), path, row_group_size=32)


def test_good_dataset_opens(good):
    manifest = open_packed_dataset(good, verify_sha256=True)
    assert manifest["num_shards"] > 2 and manifest["row_len"] == 32


def test_missing_and_empty_shard(data):
    (data / SHARD).unlink()
    with pytest.raises(FileNotFoundError, match=f"shard .*{SHARD} is missing"):
        open_packed_dataset(data)
    (data / SHARD).write_bytes(b"")
    with pytest.raises(ValueError, match=f"shard .*{SHARD} is empty"):
        open_packed_dataset(data)


def test_truncated_and_corrupt_shard(data):
    raw = (data / SHARD).read_bytes()
    (data / SHARD).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=f"shard .*{SHARD} is corrupt/truncated"):
        open_packed_dataset(data)
    (data / SHARD).write_bytes(b"not a parquet file at all" * 10)
    with pytest.raises(ValueError, match=f"shard .*{SHARD} is corrupt/truncated"):
        open_packed_dataset(data)


def test_corrupt_page_bytes_inside_shard(data):
    raw = bytearray((data / SHARD).read_bytes())
    middle = len(raw) // 2
    raw[middle - 200 : middle + 200] = bytes(400)  # damage data pages, keep header and footer
    (data / SHARD).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=f"shard .*{SHARD} is corrupt/truncated: row group \\d+: "):
        open_packed_dataset(data)


def test_missing_column_and_wrong_type(data):
    table = pq.read_table(data / SHARD)
    _rewrite(data / SHARD, table.drop_columns(["doc_starts"]))
    with pytest.raises(ValueError, match=f"shard .*{SHARD} lacks required column 'doc_starts'"):
        open_packed_dataset(data)
    wrong = table.set_column(0, "input_ids", table.column("input_ids").cast(pa.list_(pa.int64())))
    _rewrite(data / SHARD, wrong)
    expected = f"shard .*{SHARD}: column 'input_ids' is list<.*int64.*>, expected list<int32>"
    with pytest.raises(ValueError, match=expected):
        open_packed_dataset(data)


def test_token_id_outside_vocab_reports_row_group_and_row(data):
    table = pq.read_table(data / SHARD)
    rows = table.column("input_ids").to_pylist()
    rows[40][7] = 263  # byte vocab_size is 263; row 40 lies in row group 1 (groups of 32 rows)
    _rewrite(data / SHARD, table.set_column(0, "input_ids", pa.array(rows, pa.list_(pa.int32()))))
    with pytest.raises(
        ValueError,
        match=f"shard .*{SHARD}, row group 1, row 40: token id 263 at position 7 "
        r"is outside the vocabulary \[0, 263\)",
    ):
        open_packed_dataset(data)


def test_seq_len_mismatch_between_shards(tmp_path, data):
    other = tmp_path / "other"
    pack_dataset(other, tokenizer="byte", seq_len=15, tasks=["copy"], num_docs=100, rows_per_shard=100)
    shutil.copy(other / "shard-00000.parquet", data / SHARD)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][1]["num_rows"] = pq.ParquetFile(data / SHARD).metadata.num_rows
    manifest["num_rows"] = sum(s["num_rows"] for s in manifest["shards"])
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=f"shard .*{SHARD} was written with seq_len 15, the manifest says 31"):
        open_packed_dataset(data)
    # Without the parquet metadata the row lengths themselves give it away.
    _rewrite(data / SHARD, pq.read_table(data / SHARD).replace_schema_metadata({}), empty="1")
    expected = f"{SHARD}, row group 0, row 0: 'input_ids' has length 16, expected row_len 32"
    with pytest.raises(ValueError, match=expected):
        open_packed_dataset(data)


def test_bad_doc_starts_and_mask(data):
    table = pq.read_table(data / SHARD)
    starts = table.column("doc_starts").to_pylist()
    starts[3] = [0, 9, 9]
    _rewrite(data / SHARD, table.set_column(2, "doc_starts", pa.array(starts, pa.list_(pa.int32()))))
    with pytest.raises(ValueError, match=f"{SHARD}, row group 0, row 3: doc_starts must be strictly ascending"):
        open_packed_dataset(data)
    starts[3] = [1, 9]
    _rewrite(data / SHARD, table.set_column(2, "doc_starts", pa.array(starts, pa.list_(pa.int32()))))
    with pytest.raises(ValueError, match=f"{SHARD}, row group 0, row 3: doc_starts does not begin with 0"):
        open_packed_dataset(data)


def test_manifest_problems(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest"):
        open_packed_dataset(tmp_path)
    (data / "manifest.json").write_text("{truncated")
    with pytest.raises(ValueError, match="manifest.json is not valid JSON"):
        open_packed_dataset(data)
    (data / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ValueError, match="manifest.json: key 'seq_len' missing"):
        open_packed_dataset(data)


def test_sha256_mismatch_detected(data):
    # Same rows and metadata in smaller row groups: structurally valid, but not the file that was packed.
    pq.write_table(pq.read_table(data / SHARD), data / SHARD, row_group_size=7)
    open_packed_dataset(data)
    with pytest.raises(ValueError, match=f"{SHARD}: sha256 differs"):
        open_packed_dataset(data, verify_sha256=True)
