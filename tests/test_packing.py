import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_hf_tokenizer import build_tiny_hf_tokenizer

import preprocess_data_packing as preprocess_cli
from recur.data.packing import best_fit_decreasing, pack_dataset, read_documents, render_document
from recur.data.tasks import make_task_documents
from recur.data.tokenizer import load_tokenizer
from recur.data.validate import open_packed_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return str(build_tiny_hf_tokenizer(tmp_path_factory.mktemp("tok")))


def _rows(out_dir):
    manifest = open_packed_dataset(out_dir)
    tables = [pq.read_table(Path(out_dir) / shard["file"]) for shard in manifest["shards"]]
    table = pa.concat_tables(tables)
    ids = np.array(table.column("input_ids").to_pylist(), dtype=np.int64)
    mask = np.array(table.column("loss_mask").to_pylist(), dtype=np.int64)
    return manifest, ids, mask, table.column("doc_starts").to_pylist()


def _segments(ids, mask, starts):
    """(ids, mask) of every doc_starts segment, row by row."""
    for row_ids, row_mask, row_starts in zip(ids, mask, starts):
        bounds = row_starts + [len(row_ids)]
        for lo, hi in zip(bounds, bounds[1:]):
            yield tuple(row_ids[lo:hi]), tuple(row_mask[lo:hi])


def _write_jsonl(path, docs):
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    return str(path)


def _text_docs(n):
    return [{"text": " ".join(f"word{i * j % 97}" for j in range(i % 37 + 1))} for i in range(n)]


def test_concat_preserves_tokens_and_pads_only_the_end(tmp_path):
    docs = _text_docs(300)
    source = _write_jsonl(tmp_path / "in.jsonl", docs)
    manifest = pack_dataset(
        tmp_path / "out", tokenizer="byte", seq_len=63, inputs=[source], rows_per_shard=17, row_group_size=5
    )
    manifest, ids, mask, starts = _rows(tmp_path / "out")
    tok = load_tokenizer("byte")
    expected = np.concatenate([render_document(doc, tok, False).ids for doc in docs])
    flat = ids.reshape(-1)
    pad = len(flat) - len(expected)
    assert 0 <= pad < 64 and manifest["num_tokens"] == len(expected)
    assert (flat[: len(expected)] == expected).all() and (flat[len(expected) :] == tok.pad_id).all()
    assert mask.reshape(-1).sum() == len(expected)  # every real token trains, padding never does
    # Document starts: every doc begins at a recorded start, each row starts with 0, padding is a segment.
    global_starts = {r * 64 + s for r, row in enumerate(starts) for s in row}
    doc_begins = np.concatenate([[0], np.cumsum([len(render_document(d, tok, False).ids) for d in docs])[:-1]])
    assert set(doc_begins) | {r * 64 for r in range(len(ids))} | {len(expected)} == global_starts
    assert manifest["num_shards"] == -(-len(ids) // 17) and manifest["packing"]["mode"] == "concat"
    assert pq.ParquetFile(tmp_path / "out" / "shard-00000.parquet").metadata.row_group(0).num_rows == 5


@pytest.mark.parametrize("spec", ["byte", "hf"])
def test_bfd_never_splits_and_masks_exactly_the_replies(tmp_path, spec, hf_dir):
    tokenizer = "byte" if spec == "byte" else hf_dir
    docs = make_task_documents(["addition", "copy", "dyck", "chain"], 400, seed=5)
    source = _write_jsonl(tmp_path / "chat.jsonl", docs)
    manifest = pack_dataset(
        tmp_path / "out", tokenizer=tokenizer, seq_len=383, inputs=[source], packing="bfd", mask_non_assistant=True
    )
    _, ids, mask, starts = _rows(tmp_path / "out")
    tok = load_tokenizer(tokenizer)
    expected = Counter()
    for doc in docs:
        doc_ids, assistant = tok.apply_chat_template(doc["messages"])
        expected[(tuple(doc_ids) + (tok.eos_id,), tuple(assistant) + (0,))] += 1
    segments = Counter(_segments(ids, mask, starts))
    padding = [seg for seg in segments if set(seg[0]) == {tok.pad_id} and set(seg[1]) == {0}]
    for seg in padding:
        del segments[seg]
    assert segments == expected  # every document appears whole, once, with exactly its assistant mask
    assert 0.5 < manifest["packing"]["efficiency"] <= 1
    assert manifest["num_tokens"] == sum(len(seg[0]) * n for seg, n in expected.items())


def test_parallel_tokenization_is_identical(tmp_path, hf_dir):
    source = _write_jsonl(tmp_path / "in.jsonl", _text_docs(700))
    for procs in (1, 2):
        pack_dataset(tmp_path / f"p{procs}", tokenizer=hf_dir, seq_len=31, inputs=[source], num_proc=procs)
    one, two = (_rows(tmp_path / f"p{procs}") for procs in (1, 2))
    assert (one[1] == two[1]).all() and one[3] == two[3]


def test_generated_tasks_and_all_input_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first paragraph\nstill first\n\n\nsecond one\n")
    pq.write_table(pa.table({"text": ["from parquet"]}), tmp_path / "b.parquet")
    chat = make_task_documents(["parity"], 2, seed=0)
    pq.write_table(pa.Table.from_pylist(chat), tmp_path / "c.parquet")
    assert read_documents(tmp_path / "a.txt") == [{"text": "first paragraph\nstill first"}, {"text": "second one"}]
    assert read_documents(tmp_path / "c.parquet") == chat
    manifest = pack_dataset(
        tmp_path / "out",
        tokenizer="byte",
        seq_len=32,
        tasks=["parity", "successor"],
        num_docs=50,
        seed=1,
        inputs=[str(tmp_path / n) for n in ("a.txt", "b.parquet", "c.parquet")],
    )
    assert [s["documents"] for s in manifest["sources"]] == [2, 1, 2, 50]
    assert manifest["sources"][-1]["path"] == "tasks:parity,successor"


def test_bfd_too_long_document_needs_truncate(tmp_path):
    source = _write_jsonl(tmp_path / "long.jsonl", [{"text": "short"}, {"text": "x" * 100}])
    with pytest.raises(ValueError, match=r"document 1 of .*long.jsonl has 101 tokens > row_len 33.*--truncate"):
        pack_dataset(tmp_path / "out", tokenizer="byte", seq_len=32, inputs=[source], packing="bfd")
    manifest = pack_dataset(
        tmp_path / "out", tokenizer="byte", seq_len=32, inputs=[source], packing="bfd", truncate=True
    )
    assert manifest["num_tokens"] == 6 + 33 and manifest["num_rows"] == 2


def _naive_best_fit(lengths, capacity):
    rooms = []
    for size in sorted(lengths, reverse=True):
        fitting = [i for i, room in enumerate(rooms) if room >= size]
        if fitting:
            best = min(fitting, key=lambda i: rooms[i])
            rooms[best] -= size
        else:
            rooms.append(capacity - size)
    return sorted(rooms)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 50), max_size=80), capacity=st.integers(50, 120))
def test_bfd_matches_naive_best_fit(lengths, capacity):
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    rooms = sorted(capacity - sum(lengths[i] for i in b) for b in bins)
    assert min(rooms, default=0) >= 0 and rooms == _naive_best_fit(lengths, capacity)


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"content": "no text"}\n')
    cases = [
        ([str(empty)], f"input file {empty} is empty"),
        ([str(bad)], f"{bad}, line 2: expected an object with a string 'text'"),
        ([str(tmp_path / "nope.jsonl")], "nope.jsonl not found"),
        (["--tasks", "sorting", "--num_docs", "5"], "unknown task 'sorting'; expected one of"),
        (["--tasks", "parity"], "--num_docs must be >= 1"),
        ([str(tmp_path / "x.csv")], "x.csv not found"),
    ]
    (tmp_path / "y.csv").write_text("a,b\n")
    cases.append(([str(tmp_path / "y.csv")], "unsupported extension '.csv'"))
    truncated = tmp_path / "t.parquet"  # pyarrow raises ArrowInvalid (a ValueError) that names no file
    pq.write_table(pa.table({"text": ["some text"] * 50}), truncated)
    truncated.write_bytes(truncated.read_bytes()[:-40])
    cases.append(([str(truncated)], f"input file {truncated} is corrupt/truncated"))
    for extra, message in cases:
        assert preprocess_cli.main([*extra, "--seq_len", "16", "--out_dir", str(tmp_path / "out")]) == 2
        stderr = capsys.readouterr().err
        assert (
            message in stderr and stderr.startswith("preprocess_data_packing.py: error: ") and stderr.count("\n") == 1
        ), stderr
    # The script itself turns the error into exit status 2.
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "preprocess_data_packing.py"),
            str(empty),
            "--seq_len",
            "8",
            "--out_dir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2 and f"input file {empty} is empty" in result.stderr


def test_text_docs_refused_with_mask_non_assistant(tmp_path):
    source = _write_jsonl(tmp_path / "plain.jsonl", [{"text": "hello"}])
    with pytest.raises(ValueError, match="plain.jsonl: --mask_non_assistant needs chat documents"):
        pack_dataset(tmp_path / "out", tokenizer="byte", seq_len=16, inputs=[source], mask_non_assistant=True)


def test_refuses_to_overwrite_without_flag(tmp_path):
    pack_dataset(tmp_path / "out", tokenizer="byte", seq_len=16, tasks=["copy"], num_docs=40)
    with pytest.raises(ValueError, match="already holds a packed dataset.*--overwrite"):
        pack_dataset(tmp_path / "out", tokenizer="byte", seq_len=16, tasks=["copy"], num_docs=4)
    pack_dataset(
        tmp_path / "out", tokenizer="byte", seq_len=16, tasks=["copy"], num_docs=4, overwrite=True, rows_per_shard=1
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"] + [
        f"shard-{i:05d}.parquet" for i in range(open_packed_dataset(tmp_path / "out")["num_shards"])
    ]
