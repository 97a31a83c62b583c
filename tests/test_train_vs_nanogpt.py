"""bench/train_vs_nanogpt.py: the same tokens in both trainers' formats, the flags each trainer accepts, the
log parsing, and (when a nanoGPT copy is in third_party/nanoGPT, never downloaded here) the whole smoke run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bench import train_vs_nanogpt as tvn
from recur.cli import parse_config
from recur.recurrence import RecurrenceSampler

NANOGPT_DIR = tvn.ROOT / "third_party" / "nanoGPT"


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    return tvn.write_datasets(tmp_path_factory.mktemp("tvn"), tvn.SMOKE, train_rows=40, val_rows=8)


def _packed_ids(path: Path) -> np.ndarray:
    return np.concatenate(
        [
            np.stack(pq.read_table(f).column("input_ids").to_numpy(zero_copy_only=False))
            for f in sorted(path.glob("shard-*.parquet"))
        ]
    )


def test_both_formats_hold_the_same_tokens(datasets):
    row_len = tvn.SMOKE.seq_len + 1
    for split, rows in (("train", 40), ("val", 8)):
        stream = np.memmap(datasets["nanogpt"] / f"{split}.bin", dtype=np.uint16, mode="r")
        packed = _packed_ids(datasets[split])
        assert packed.shape == (rows, row_len)
        np.testing.assert_array_equal(packed.reshape(-1), stream)
        manifest = json.loads((datasets[split] / "manifest.json").read_text())
        assert manifest["seq_len"] == tvn.SMOKE.seq_len and manifest["tokenizer"]["vocab_size"] == tvn.SMOKE.vocab
    # One document per row: train.py then runs plain causal attention, as nanoGPT does.
    starts = pq.read_table(next(datasets["train"].glob("shard-*.parquet"))).column("doc_starts").to_pylist()
    assert all(s == [0] for s in starts)
    with open(datasets["nanogpt"] / "meta.pkl", "rb") as f:
        assert pickle.load(f) == {"vocab_size": tvn.SMOKE.model_vocab}
    # Seeded: a second write gives the same tokens; train and val differ.
    assert (tvn.synthetic_stream(100, 50257, 0) == tvn.synthetic_stream(100, 50257, 0)).all()
    assert not (tvn.synthetic_stream(100, 50257, 0) == tvn.synthetic_stream(100, 50257, 1)).all()


@pytest.mark.parametrize("shape", [tvn.SMOKE, tvn.FULL], ids=["smoke", "full"])
@pytest.mark.parametrize("r", [None, 1, 4])
def test_recur_commands_parse_and_fix_the_depth(datasets, tmp_path, shape, r):
    """The flags are ones train.py accepts (its own parser and validation), and the recurrent runs train
    at exactly (n, k) = (0, r) on every step."""
    cmd = tvn.recur_command(shape, 20, datasets, tmp_path, "run", r)
    cfg, _ = parse_config(cmd[2:])
    assert cfg.model.variant == ("baseline" if r is None else "recurrent")
    assert cfg.compile is shape.compile and cfg.data.global_batch_size == shape.batch and cfg.model.dropout == 0.0
    resolved = cfg.model.resolved()
    assert (resolved.n_layers, resolved.d_model, resolved.n_heads) == (shape.n_layers, shape.d_model, shape.n_heads)
    assert resolved.vocab_size == shape.model_vocab and resolved.max_seq_len >= shape.seq_len
    if r is not None:
        sampler = RecurrenceSampler(cfg.recurrence, cfg.steps)
        assert {(sampler(s).no_grad_steps, sampler(s).grad_steps) for s in range(cfg.steps)} == {(0, r)}


def test_nanogpt_command_sets_the_shape(tmp_path):
    cmd = tvn.nanogpt_command(tvn.FULL, 50, tmp_path / "data", tmp_path / "out")
    flags = dict(arg[2:].split("=", 1) for arg in cmd[3:])
    assert cmd[1:3] == ["train.py", "config/train_gpt2.py"]
    assert flags["max_iters"] == "49" and flags["log_interval"] == "1" and flags["wandb_log"] == "False"
    assert (flags["batch_size"], flags["block_size"], flags["n_layer"], flags["n_embd"]) == ("32", "1024", "12", "768")
    assert (flags["bias"], flags["dropout"], flags["compile"], flags["dtype"]) == ("False", "0.0", "True", "bfloat16")
    assert flags["gradient_accumulation_steps"] == "1" and Path(flags["dataset"]).is_absolute()


NANOGPT_STDOUT = """step 0: train loss 10.9895, val loss 10.9893
iter 0: loss 10.9880, time 41234.56ms, mfu -100.00%
iter 1: loss 10.9000, time 70.00ms, mfu -100.00%
iter 2: loss 10.8000, time 68.00ms, mfu -100.00%
iter 3: loss 10.7000, time 66.00ms, mfu -100.00%
iter 4: loss 10.6000, time 90.00ms, mfu -100.00%
iter 5: loss 10.5000, time 67.00ms, mfu 55.10%
"""


def test_nanogpt_log_parsing_skips_warmup():
    records = tvn.parse_nanogpt_log(NANOGPT_STDOUT)
    assert [r["step"] for r in records] == list(range(6)) and records[0]["step_ms"] == 41234.56
    summary = tvn.summarize_nanogpt(records, tvn.FULL, warmup=3)  # median of 66, 90, 67: the 90 ms outlier is ignored
    assert summary["median_step_ms"] == 67.0 and summary["steps_timed"] == 3
    assert summary["tokens_per_s"] == pytest.approx(32 * 1024 / 0.067)
    assert summary["reported_mfu_pct_vs_a100_312tflops"] == 55.1 and summary["last_loss"] == 10.5


def test_recur_metrics_summary_and_recompile_count():
    records = [
        {"step": i, "loss": 5.0 - i, "tokens": 4096 * (i + 1), "tokens_per_s": tps, "mfu": mfu, "r": 4, "k": 4}
        for i, (tps, mfu) in enumerate([(10.0, 0.01), (4000.0, 0.4), (4096.0, 0.5), (5000.0, 0.6)])
    ]
    summary = tvn.summarize_recur(records, warmup=1)
    assert summary["tokens_per_s"] == 4096.0 and summary["mfu"] == 0.5 and summary["median_step_ms"] == 1000.0
    assert summary["r"] == [4] and summary["k"] == [4] and summary["steps_timed"] == 3
    assert tvn.summarize_recur([{**r, "mfu": None} for r in records], warmup=1)["mfu"] is None  # CPU: no MFU
    recompiling = (
        "V1202 torch/_dynamo/guards.py:3000] [0/1] [__recompiles] Recompiling function forward in block.py:10\n"
    )
    stderr = (
        recompiling
        + "V1202 [__recompiles]     triggered by the following guard failure(s):\n"
        + "step      1/2 | loss 1.0 | lr 1e-3\n"
        + recompiling
        + "step      2/2 | loss 1.0 | lr 1e-3\n"
        + recompiling * 3
        + "[done] final loss 1.0\n"
    )
    assert tvn.count_recompiles(stderr) == {"training": 2, "evaluation": 3}
    assert tvn.count_recompiles(recompiling) == {"training": 1, "evaluation": 0}  # a run that never finished


def test_headline_tolerates_a_failed_run():
    runs = {
        "nanogpt": {"tokens_per_s": 400.0},
        "recur_baseline": {"tokens_per_s": 440.0, "mfu": 0.5, "recompiles": 0},
        "recurrent_r1": {"error": "exit 1"},
        "recurrent_r4": {"tokens_per_s": 150.0, "mfu": 0.55, "recompiles": 0},
    }
    head = tvn.headline(runs)
    assert head["ratio"] == pytest.approx(1.1) and head["recurrent_r1_tokens_per_s"] is None
    assert head["recurrent_mfu_over_baseline_mfu_r1"] is None and head[
        "recurrent_mfu_over_baseline_mfu_r4"
    ] == pytest.approx(1.1)
    assert head["recompiles"] == {"recur_baseline": 0, "recurrent_r1": None, "recurrent_r4": 0}


def test_missing_nanogpt_dir_is_one_line_exit_2(tmp_path, capsys):
    assert tvn.main(["--smoke", "--nanogpt_dir", str(tmp_path / "absent"), "--work_dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nanogpt_dir" in err and not (tmp_path / "w").exists()


@pytest.mark.skipif(not (NANOGPT_DIR / "train.py").is_file(), reason="no nanoGPT copy in third_party/nanoGPT")
def test_smoke_runs_both_trainers_end_to_end(tmp_path):
    out = tmp_path / "result.json"
    assert (
        tvn.main(
            [
                "--smoke",
                "--nanogpt_dir",
                str(NANOGPT_DIR),
                "--work_dir",
                str(tmp_path / "w"),
                "--out",
                str(out),
                "--steps",
                "4",
                "--r4_steps",
                "4",
                "--warmup",
                "1",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    for key in (
        "recur_tokens_per_s",
        "nanogpt_tokens_per_s",
        "ratio",
        "recurrent_r1_tokens_per_s",
        "recurrent_r4_tokens_per_s",
    ):
        assert result[key] > 0, key
    assert "recurrent_mfu_over_baseline_mfu_r1" in result and "torch" in result["environment"]
    assert result["runs"]["recurrent_r4"]["r"] == [4] and result["runs"]["recurrent_r1"]["k"] == [1]
    assert all(
        result["runs"][name]["command"] for name in ("nanogpt", "recur_baseline", "recurrent_r1", "recurrent_r4")
    )
    no_recompiles = {"training": 0, "evaluation": 0}  # compile is off in the smoke run
    assert result["recompiles"] == {
        "recur_baseline": no_recompiles,
        "recurrent_r1": no_recompiles,
        "recurrent_r4": no_recompiles,
    }
