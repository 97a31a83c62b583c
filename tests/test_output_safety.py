"""A failed command never destroys data and leaves nothing half made: outputs are built beside the
destination and swapped in only when complete; a run that fails before its first step leaves no directory;
errors from data-loader workers are one line like any other (issue 15, cases 1, 6 and 8)."""

import json

import pyarrow.parquet as pq
import pytest
import torch

import mix_datasets as mix_cli
import preprocess_data_packing as preprocess_cli
import stateful_parquet_dataset as inspect_cli
from recur.cli_common import run_cli
from recur.data.packing import pack_dataset
from recur.data.shard_writer import file_sha256
from tests.train_helpers import run_train_in_process, tiny_args, tree_digest


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "A"
    pack_dataset(out, tokenizer="byte", seq_len=64, tasks=["successor"], num_docs=200, seed=0, packing="bfd")
    return out


def test_failed_overwrite_of_a_mix_keeps_the_old_mix(tmp_path, dataset, capsys):
    mix = tmp_path / "M"
    assert mix_cli.main(["--source", f"{dataset}:1", "--out_dir", str(mix)]) == 0
    before = tree_digest(mix)
    (tmp_path / "B").mkdir()  # not a dataset: the new mix fails after the old one would have been cleared
    assert (
        mix_cli.main(
            ["--source", f"{dataset}:1", "--source", f"{tmp_path / 'B'}:1", "--overwrite", "--out_dir", str(mix)]
        )
        == 2
    )
    assert tree_digest(mix) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A", "B", "M"]  # no temporary directory left


def test_failed_overwrite_of_a_packed_dataset_keeps_it(tmp_path, dataset, capsys):
    before = tree_digest(dataset)
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"text": "x" * 500}) + "\n")  # longer than a row: bfd fails late
    assert (
        preprocess_cli.main(
            [str(long), "--seq_len", "64", "--packing", "bfd", "--overwrite", "--out_dir", str(dataset)]
        )
        == 2
    )
    assert "bfd never splits documents" in capsys.readouterr().err
    assert tree_digest(dataset) == before


def test_failed_mix_into_a_new_directory_leaves_nothing(tmp_path, dataset):
    (tmp_path / "B").mkdir()
    assert (
        mix_cli.main(
            ["--source", f"{dataset}:1", "--source", f"{tmp_path / 'B'}:1", "--out_dir", str(tmp_path / "new")]
        )
        == 2
    )
    assert not (tmp_path / "new").exists()


def test_successful_overwrite_replaces_the_dataset(tmp_path, dataset):
    before = tree_digest(dataset)
    pack_dataset(
        dataset, tokenizer="byte", seq_len=64, tasks=["parity"], num_docs=100, seed=1, packing="bfd", overwrite=True
    )
    after = tree_digest(dataset)
    assert after != before and "manifest.json" in after
    assert json.loads((dataset / "manifest.json").read_text())["sources"][0]["tasks"] == ["parity"]


def test_a_non_empty_directory_that_is_no_dataset_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and holds no packed dataset"):
        pack_dataset(tmp_path / "notes", tokenizer="byte", seq_len=16, tasks=["copy"], num_docs=4, overwrite=True)
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"


def test_train_that_fails_before_its_first_step_leaves_no_run_directory(tmp_path):
    (tmp_path / "not_data").mkdir()
    result = run_train_in_process(
        [
            "--out_dir",
            str(tmp_path / "runs"),
            "--run_name",
            "r",
            "--data.path",
            str(tmp_path / "not_data"),
            "--steps",
            "5",
            "--optim.schedule.warmup_steps",
            "1",
        ]
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert not (tmp_path / "runs" / "r").exists()


class _BadShard(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        raise ValueError(f"shard-00003.parquet row group {index}: page checksum mismatch")


def test_a_data_loader_worker_error_is_one_line(capsys):
    def main() -> int:
        for _ in torch.utils.data.DataLoader(_BadShard(), num_workers=1):
            pass
        return 0

    assert run_cli("train.py", main) == 2
    err = capsys.readouterr().err
    assert err == "train.py: error: shard-00003.parquet row group 0: page checksum mismatch\n", err


def _flip_a_bit_in_a_data_page(shard) -> None:
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x04  # input_ids pages fill most of the file
    shard.write_bytes(bytes(data))


def test_a_flipped_bit_in_a_shard_is_caught_naming_the_shard(tmp_path, dataset):
    """Shards carry page CRCs and every reader verifies them (issue 15, case 3)."""
    from recur.data.packed_reader import PackedShards

    (shard,) = sorted(dataset.glob("shard-*.parquet"))
    _flip_a_bit_in_a_data_page(shard)
    reader = PackedShards(dataset)
    with pytest.raises(ValueError, match=r"shard .*shard-00000.parquet is corrupt/truncated: row group 0: .*checksum"):
        for group in range(len(reader.group_sizes)):
            reader.read_group(group)
    assert mix_cli.main(["--source", f"{dataset}:1", "--out_dir", str(tmp_path / "M")]) == 2
    assert not (tmp_path / "M").exists()


def _rewrite_in_other_row_groups(shard) -> None:
    """The same rows in other row groups: a valid shard with sound page CRCs, but not the file that was packed."""
    pq.write_table(pq.read_table(shard), shard, row_group_size=7)


def test_a_shard_changed_after_packing_fails_the_sha256_check(tmp_path, dataset, capsys):
    """mix_datasets.py always checks its inputs' digests (it used to mix a changed shard into a sound-looking
    dataset); train.py --data.verify_sha256 and stateful_parquet_dataset.py --verify_sha256 check them first.
    Each fails with one line naming the shard and both digests, exit 2 (issue 15, case 3)."""
    (shard,) = sorted(dataset.glob("shard-*.parquet"))
    expected = json.loads((dataset / "manifest.json").read_text())["shards"][0]["sha256"]
    _rewrite_in_other_row_groups(shard)
    message = f"shard {shard}: sha256 differs from the manifest (expected {expected}, got {file_sha256(shard)}"
    assert mix_cli.main(["--source", f"{dataset}:1", "--out_dir", str(tmp_path / "M")]) == 2
    assert not (tmp_path / "M").exists()
    assert inspect_cli.main([str(dataset), "--global_batch_size", "4", "--verify_sha256"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all(message in line for line in errors), errors
    result = run_train_in_process(
        tiny_args(tmp_path / "runs" / "r", dataset, steps=6, **{"--data.verify_sha256": "true"})
    )
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"train.py: error: {message}; the file changed after packing)"
    ], result.stderr
    assert not (tmp_path / "runs" / "r").exists()
