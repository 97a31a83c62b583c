"""Exactly-once, world-size invariance, resumption and error tests of the stateful parquet loader.

The fixture's row i holds token i at position 0, so every yielded row names its global row index.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from recur.data.loader import StatefulParquetDataset, make_dataloader
from recur.data.read_plan import ReadPlan, Reads
from recur.data.shard_writer import RowBlock, ShardWriter, build_manifest, finish_dataset

ROW_LEN = 17
NUM_ROWS = 240  # 10 global batches of G=24
G = 24
WORLD_SIZES = (1, 2, 3, 4, 8)


def fixture_rows(num_rows: int, row_len: int = ROW_LEN) -> RowBlock:
    rng = np.random.default_rng(1234)
    ids = (np.arange(num_rows)[:, None] * 31 + np.arange(row_len)[None, :]) % 997
    ids[:, 0] = np.arange(num_rows)
    mask = rng.integers(0, 2, size=(num_rows, row_len), dtype=np.uint8)
    starts = [
        np.concatenate([[0], np.sort(rng.choice(np.arange(1, row_len), size=i % 4, replace=False))])
        for i in range(num_rows)
    ]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in starts])])
    return RowBlock(ids.astype(np.int32), mask, np.concatenate(starts).astype(np.int32), offsets)


def write_dataset(out: Path, rows: RowBlock, rows_per_shard: int = 45, row_group_size: int = 10) -> Path:
    out.mkdir(parents=True)
    writer = ShardWriter(out, ROW_LEN - 1, rows_per_shard, row_group_size)
    writer.add(rows.to_table())
    manifest = build_manifest(
        seq_len=ROW_LEN - 1,
        tokenizer={"name": "test", "vocab_size": 1000, "pad_id": 0, "eos_id": 1, "fingerprint": "t"},
        shards=writer.close(),
        num_tokens=rows.input_ids.size,
        packing={"mode": "concat", "efficiency": 1.0},
        sources=[],
        created_by="tests/test_loader.py",
    )
    finish_dataset(out, manifest)
    return out


@pytest.fixture(scope="module")
def rows() -> RowBlock:
    return fixture_rows(NUM_ROWS)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, rows: RowBlock) -> Path:
    # 45-row shards with 10-row groups: uneven group sizes (10,10,10,10,5) exercise window bookkeeping.
    return write_dataset(tmp_path_factory.mktemp("packed") / "data", rows)


def make(data_dir: Path, **kwargs) -> StatefulParquetDataset:
    return StatefulParquetDataset(data_dir, **{"global_batch_size": G, "shuffle_window": 3, **kwargs})


def read_global_batches(
    data_dir: Path, world_size: int, workers: int, steps: int | None, state: dict | None = None, **kwargs
) -> list[np.ndarray]:
    """Row indices of each global batch, assembled from all ranks' shares in rank order.

    ``steps=None`` reads one pass (``infinite=False``); otherwise ``steps`` global batches of the endless stream.
    """
    per_rank = []
    for rank in range(world_size):
        dataset = make(data_dir, rank=rank, world_size=world_size, infinite=steps is not None, **kwargs)
        if state is not None:
            dataset.load_state_dict(state)
        loader = make_dataloader(dataset, num_workers=workers)
        micro_per_step = dataset.micro_batches_per_step
        items = []
        for item in loader:
            items.append(item["input_ids"][:, 0].numpy())
            if steps is not None and len(items) == steps * micro_per_step:
                break
        per_rank.append([np.concatenate(items[i : i + micro_per_step]) for i in range(0, len(items), micro_per_step)])
    assert len({len(r) for r in per_rank}) == 1
    return [np.concatenate([r[step] for r in per_rank]) for step in range(len(per_rank[0]))]


@pytest.fixture(scope="module")
def reference(data_dir: Path) -> list[np.ndarray]:
    """Three epochs read by one rank in-process: the sequence every other configuration must reproduce."""
    return read_global_batches(data_dir, 1, 0, steps=3 * NUM_ROWS // G)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_one_epoch_exactly_once_and_world_size_invariant(
    data_dir: Path, reference: list[np.ndarray], world_size: int, workers: int
) -> None:
    batches = read_global_batches(data_dir, world_size, workers, steps=None)
    assert len(batches) == NUM_ROWS // G
    assert all(len(b) == G for b in batches)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(NUM_ROWS))
    assert all(np.array_equal(b, r) for b, r in zip(batches, reference))


def test_rows_match_the_written_data(data_dir: Path, rows: RowBlock) -> None:
    dataset = make(data_dir, world_size=3, rank=1, micro_batch_size=4)
    for _, batch in zip(range(12), dataset):
        index = batch["input_ids"][:, 0].numpy()
        assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (4, ROW_LEN)
        assert np.array_equal(batch["input_ids"].numpy(), rows.input_ids[index])
        assert np.array_equal(batch["loss_mask"].numpy(), rows.loss_mask[index])
        for row, doc_ids in zip(index, batch["doc_ids"].numpy()):
            starts = rows.doc_starts[rows.doc_offsets[row] : rows.doc_offsets[row + 1]]
            expected = np.searchsorted(starts, np.arange(ROW_LEN), side="right") - 1
            assert np.array_equal(doc_ids, expected)


def test_resume_with_another_world_size_and_workers(data_dir: Path, reference: list[np.ndarray]) -> None:
    rng = random.Random(0)
    total = len(reference)
    for _ in range(4):
        stop = rng.randrange(1, total - 3)
        first_w, second_w = rng.choice(WORLD_SIZES), rng.choice(WORLD_SIZES)
        first_k, second_k = rng.choice([0, 2]), rng.choice([0, 2])
        micro = rng.choice([None, 1])  # micro-batches of 1 row: the finest split every W supports
        states = []
        for rank in range(first_w):
            dataset = make(data_dir, rank=rank, world_size=first_w, micro_batch_size=micro)
            loader = make_dataloader(dataset, num_workers=first_k)
            consumed = 0
            for _item in loader:
                consumed += 1
                if consumed == stop * dataset.micro_batches_per_step:
                    break
            states.append(json.loads(json.dumps(loader.state_dict())))
        assert all(s == states[0] for s in states), "state must not depend on the rank"
        assert states[0]["batch_index"] == stop and states[0]["epoch"] == stop * G // NUM_ROWS
        resumed = read_global_batches(data_dir, second_w, second_k, steps=total - stop, state=states[0])
        assert all(np.array_equal(a, b) for a, b in zip(resumed, reference[stop:], strict=True))


def test_state_mid_accumulation_resumes_at_the_global_batch(data_dir: Path, reference: list[np.ndarray]) -> None:
    dataset = make(data_dir, micro_batch_size=6)
    iterator = iter(dataset)
    for _ in range(4 + 2):  # one full global batch of four micro-batches, then half of the next
        next(iterator)
    assert dataset.state_dict()["batch_index"] == 1
    again = make(data_dir, micro_batch_size=6)
    again.load_state_dict(dataset.state_dict())
    assert np.array_equal(next(iter(again))["input_ids"][:, 0].numpy(), reference[1][:6])


def test_epochs_reshuffle_and_infinite_continues(data_dir: Path, reference: list[np.ndarray]) -> None:
    per_epoch = NUM_ROWS // G
    epochs = [np.concatenate(reference[e * per_epoch : (e + 1) * per_epoch]) for e in range(3)]
    for order in epochs:
        assert np.array_equal(np.sort(order), np.arange(NUM_ROWS))
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    dataset = make(data_dir, infinite=False)
    for epoch in range(2):
        assert dataset.epoch == epoch
        assert np.array_equal(np.concatenate([b["input_ids"][:, 0].numpy() for b in dataset]), epochs[epoch])
    assert dataset.epoch == 2 and dataset.batch_index == 2 * per_epoch


def test_seed_determines_order(data_dir: Path, reference: list[np.ndarray]) -> None:
    same = read_global_batches(data_dir, 2, 0, steps=5, seed=0)
    other = read_global_batches(data_dir, 2, 0, steps=5, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(same, reference))
    assert not np.array_equal(np.concatenate(other), np.concatenate(reference[:5]))


def test_no_shuffle_reads_in_storage_order(data_dir: Path) -> None:
    batches = read_global_batches(data_dir, 4, 0, steps=None, shuffle=False)
    assert np.array_equal(np.concatenate(batches), np.arange(NUM_ROWS))


def test_batches_cut_across_epochs_when_rows_do_not_divide(data_dir: Path) -> None:
    dataset = make(data_dir, global_batch_size=36, world_size=2, rank=0, infinite=False)
    assert len(list(dataset)) == 7  # ceil(240 / 36): the seventh batch finishes epoch 0 and starts epoch 1
    assert dataset.batch_index == 7 and dataset.epoch == 1
    ranks = [make(data_dir, global_batch_size=36, world_size=2, rank=r) for r in range(2)]
    streams = [[b["input_ids"][:, 0].numpy() for _, b in zip(range(20), d)] for d in ranks]
    stream = np.concatenate([np.concatenate(pair) for pair in zip(*streams)])
    for epoch in range(3):  # 20 * 36 = 720 rows = exactly three epochs, each a permutation
        assert np.array_equal(np.sort(stream[epoch * NUM_ROWS : (epoch + 1) * NUM_ROWS]), np.arange(NUM_ROWS))


def test_batch_larger_than_the_dataset(tmp_path: Path) -> None:
    small = write_dataset(tmp_path / "small", fixture_rows(20), rows_per_shard=20, row_group_size=7)
    ranks = [StatefulParquetDataset(small, global_batch_size=48, world_size=2, rank=r) for r in range(2)]
    batch = np.concatenate([next(iter(d))["input_ids"][:, 0].numpy() for d in ranks])
    # 48 rows = epoch 0, epoch 1 and the first 8 rows of epoch 2.
    assert np.array_equal(np.sort(batch[:20]), np.arange(20)) and np.array_equal(np.sort(batch[20:40]), np.arange(20))
    assert len(set(batch[40:])) == 8 and ranks[0].epoch == 2


def test_state_round_trips_and_validates(data_dir: Path, tmp_path: Path) -> None:
    dataset = make(data_dir, world_size=4, rank=3)
    for _, _batch in zip(range(3), dataset):
        pass
    state = json.loads(json.dumps(dataset.state_dict()))
    assert state == dataset.state_dict() and state["batch_index"] == 3
    other = make(data_dir)
    other.load_state_dict(state)
    assert other.state_dict() == state
    with pytest.raises(ValueError, match="global_batch_size=24 but this loader has global_batch_size=48"):
        make(data_dir, global_batch_size=48).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        make(data_dir, seed=5).load_state_dict(state)
    different = write_dataset(tmp_path / "other", fixture_rows(NUM_ROWS + 24))
    with pytest.raises(ValueError, match="dataset_fingerprint"):
        make(different).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        make(data_dir).load_state_dict({"batch_index": 3})
    with pytest.raises(ValueError, match="inconsistent"):
        make(data_dir).load_state_dict({**state, "epoch": 4})


def test_bad_batch_geometry_errors(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="--global_batch_size 24 is not divisible by the world size 5"):
        make(data_dir, world_size=5)
    with pytest.raises(ValueError, match="--micro_batch_size 5 must divide"):
        make(data_dir, world_size=4, micro_batch_size=5)
    with pytest.raises(ValueError, match="rank 4 is outside"):
        make(data_dir, world_size=4, rank=4)


def test_bad_shards_name_the_file(tmp_path: Path, rows: RowBlock) -> None:
    with pytest.raises(FileNotFoundError, match="manifest"):
        make(tmp_path)
    truncated = write_dataset(tmp_path / "truncated", rows)
    shard = truncated / "shard-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:200])
    with pytest.raises(ValueError, match="shard-00001.parquet"):
        make(truncated)
    missing = write_dataset(tmp_path / "missing", rows)
    (missing / "shard-00002.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00002.parquet"):
        make(missing)
    empty = write_dataset(tmp_path / "empty", rows)
    (empty / "shard-00000.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="shard-00000.parquet"):
        make(empty)
    no_column = write_dataset(tmp_path / "no_column", rows)
    shard = no_column / "shard-00003.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["doc_starts"]), shard)
    with pytest.raises(ValueError, match="shard-00003.parquet lacks required column 'doc_starts'"):
        make(no_column)


def test_bad_rows_name_the_file_and_row_group(tmp_path: Path, rows: RowBlock) -> None:
    bad = write_dataset(tmp_path / "bad", rows)
    shard = bad / "shard-00004.parquet"
    table = pq.read_table(shard)
    starts = table.column("doc_starts").to_pylist()
    starts[12] = [3]  # must begin with 0: found only when that row group is read
    pq.write_table(table.set_column(2, "doc_starts", pa.array(starts, pa.list_(pa.int32()))), shard, row_group_size=10)
    dataset = make(bad, shuffle=False)
    with pytest.raises(ValueError, match="shard-00004.parquet, row group 1, row 12: doc_starts does not begin with 0"):
        for _batch in dataset:
            pass


def test_cli_shows_the_next_rows_from_a_state(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from stateful_parquet_dataset import main

    dataset = make(data_dir, world_size=4)
    for _, _batch in zip(range(2), dataset):
        pass
    state = tmp_path / "state.json"
    state.write_text(json.dumps(dataset.state_dict()))
    assert main([str(data_dir), "--rank", "1", "--world_size", "4", "--state", str(state), "--show", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = make(data_dir, world_size=4, rank=1).read(2)["input_ids"][:, 0].tolist()
    rows = [line for line in lines if line.startswith("  ")]
    assert [int(line.split("ids [")[1].split(",")[0]) for line in rows] == expected
    assert main([str(data_dir), "--world_size", "5", "--global_batch_size", "24"]) == 2
    assert "--global_batch_size 24 is not divisible" in capsys.readouterr().err


def test_workers_fork_from_a_dataset_already_read_in_process(data_dir: Path, reference: list[np.ndarray]) -> None:
    # The in-process read leaves a prefetch thread behind; forked workers must not wait on it.
    dataset = make(data_dir, world_size=2, rank=0)
    assert np.array_equal(next(iter(dataset))["input_ids"][:, 0].numpy(), reference[0][:12])
    loader = make_dataloader(dataset, num_workers=2)
    shares = [batch["input_ids"][:, 0].numpy() for _, batch in zip(range(3), loader)]
    assert all(np.array_equal(s, r[:12]) for s, r in zip(shares, reference[1:4]))


def test_a_version_1_state_refuses_naming_the_format_version(data_dir: Path) -> None:
    # A state saved by the loader before lanes (format version 1) took batches in walk order.
    state = {**make(data_dir).state_dict(), "version": 1, "batch_index": 3}
    with pytest.raises(
        ValueError, match=r"^loader state format version 1 cannot be resumed exactly .*version 2[^\n]*$"
    ):
        make(data_dir).load_state_dict(state)


def decoded_groups(monkeypatch: pytest.MonkeyPatch, dataset: StatefulParquetDataset) -> list[int]:
    calls: list[int] = []
    read_group = dataset.shards.read_group
    monkeypatch.setattr(dataset.shards, "read_group", lambda g: calls.append(g) or read_group(g))
    return calls


@pytest.mark.parametrize("world_size,micro", [(1, None), (4, 3), (8, None), (24, None)])
def test_a_rank_decodes_only_groups_holding_its_rows_once_per_epoch(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, world_size: int, micro: int | None
) -> None:
    decoded = 0
    for rank in range(world_size):
        dataset = make(data_dir, rank=rank, world_size=world_size, micro_batch_size=micro, infinite=False)
        calls = decoded_groups(monkeypatch, dataset)
        origins = set()
        for step, _batch in enumerate(dataset):
            batch, micro_index = divmod(step, dataset.micro_batches_per_step)
            origins |= {(file, group) for file, group, _ in dataset.origins(batch, micro_index)}
        assert len(calls) == len(set(calls)), "a row group was decoded twice in one epoch"
        assert {dataset.shards.origin(g) for g in calls} == origins
        decoded += len(calls)
    # Ranks read adjacent stretches of the walk: only a group cut by a boundary between two is read twice.
    assert decoded <= len(dataset.shards.group_sizes) + world_size - 1


def test_windows_of_one_group_put_every_row_of_a_batch_in_its_own_group(data_dir: Path) -> None:
    # Lanes are N/G = 10 walk rows apart and no group holds more than 10 rows.
    dataset = make(data_dir, shuffle_window=1)
    for batch in range(NUM_ROWS // G):
        assert len({(file, group) for file, group, _ in dataset.origins(batch)}) == G


def test_shuffle_window_is_compared_on_resume_only_while_shuffling(data_dir: Path) -> None:
    # Storage order has no windows, so a state saved with another window resumes exactly.
    unshuffled = make(data_dir, shuffle=False, shuffle_window=1)
    unshuffled.load_state_dict(make(data_dir, shuffle=False, shuffle_window=3).state_at(4))
    assert np.array_equal(next(iter(unshuffled))["input_ids"][:, 0].numpy(), np.arange(4 * G, 5 * G))
    with pytest.raises(ValueError, match="saved with shuffle_window=3 but this loader has shuffle_window=1"):
        make(data_dir, shuffle_window=1).load_state_dict(make(data_dir, shuffle_window=3).state_at(4))


def test_errors_name_the_settings_as_the_caller_spells_them(data_dir: Path) -> None:
    # The trainer passes its prefix; its flags are --data.seed etc.
    with pytest.raises(ValueError, match=r"^--data\.seed must be >= 0, got -1$"):
        make(data_dir, seed=-1, flags="--data.")
    with pytest.raises(ValueError, match=r"^--data\.shuffle_window must be >= 1, got 0$"):
        make(data_dir, shuffle_window=0, flags="--data.")
    with pytest.raises(ValueError, match=r"^--data\.micro_batch_size 5 must divide"):
        make(data_dir, micro_batch_size=5, flags="--data.")
    with pytest.raises(ValueError, match=r"^--data\.num_workers must be >= 0, got -1$"):
        make_dataloader(make(data_dir, flags="--data."), num_workers=-1)
    with pytest.raises(ValueError, match=r"^loader state key batch_index must be an integer, got 3\.0$"):
        make(data_dir).load_state_dict({**make(data_dir).state_at(3), "batch_index": 3.0})


_DROP = object()  # a state key to leave out


@pytest.mark.parametrize(
    "argv, state_edit, message",
    [
        (["--global_batch_size", "24", "--shuffle_window", "0"], None, "--shuffle_window must be >= 1, got 0"),
        (["--global_batch_size", "0"], None, "--global_batch_size (0) and world size (1) must be >= 1"),
        ([], None, "--global_batch_size is required when no --state is given"),
        (["--global_batch_size", "24", "--seed", "-1"], None, "--seed must be >= 0, got -1"),
        (
            ["--global_batch_size", "24", "--world_size", "4", "--rank", "4"],
            None,
            "--rank 4 must lie in [0, --world_size 4)",
        ),
        ([], {"global_batch_size": _DROP}, "--global_batch_size is required: --state STATE holds none"),
        ([], {"seed": "x"}, "--state STATE: seed must be an integer >= 0, got 'x'"),
        ([], {"shuffle_window": 0}, "--state STATE: shuffle_window must be an integer >= 1, got 0"),
        ([], {"shuffle": "yes"}, "--state STATE: shuffle must be true or false, got 'yes'"),
        ([], {"batch_index": "x"}, "--state STATE: loader state key batch_index must be an integer, got 'x'"),
        ([], {"batch_index": 3.7}, "--state STATE: loader state key batch_index must be an integer, got 3.7"),
    ],
)
def test_cli_bad_input_is_one_line_naming_the_flag_and_exit_2(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    argv: list[str],
    state_edit: dict | None,
    message: str,
) -> None:
    from stateful_parquet_dataset import main

    if state_edit is not None:
        state = {k: v for k, v in {**make(data_dir).state_at(3), **state_edit}.items() if v is not _DROP}
        path = tmp_path / "state.json"
        path.write_text(json.dumps(state))
        argv, message = [*argv, "--state", str(path)], message.replace("STATE", str(path))
    assert main([str(data_dir), *argv, "--show", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [f"stateful_parquet_dataset.py: error: {message}"]


@pytest.mark.parametrize("micro, workers", [(3, 2), (3, 4), (1, 4), (3, 3), (None, 2)])
def test_workers_dividing_the_micro_batches_per_step_decode_disjoint_groups(
    data_dir: Path, micro: int | None, workers: int
) -> None:
    # The claim of recur/data/loader.py "Workers" and docs/data.md: k | per_step gives each worker its own lanes.
    dataset = make(data_dir, micro_batch_size=micro, shuffle_window=1)
    per_step = dataset.micro_batches_per_step
    decoded = [
        set(ReadPlan(dataset.order, 0, dataset.micro_batch_size, per_step, Reads(w, workers)).epoch(0).groups.tolist())
        for w in range(workers)
    ]
    groups = len(dataset.shards.group_sizes)
    if per_step % workers == 0:
        assert sum(map(len, decoded)) <= groups + per_step - 1  # shared only where two workers' lanes meet
    else:
        assert all(len(d) == groups for d in decoded)
