"""The documented two-phase retrofit (configs/retrofit_two_phase.yaml, docs/retrofit.md) end to end on a
tiny converted Llama: convert -> pack data with its tokenizer -> phase 1 from the conversion -> phase 2 from
phase 1's checkpoint. --init_from's model fields are the defaults (explicit flags win); the data, packed
with the conversion's 400-token tokenizer, is checked against that vocabulary (not the tiny preset's 320)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from hf_fixtures import TINY_VOCAB, make_tiny_llama
from train_helpers import REPO, run_train_in_process

from recur.eval.load import saved_config

# The phase configs as shipped, shrunk only in run length and batch: everything else is the documented setup.
SMALL = [
    "--steps",
    "10",
    "--data.seq_len",
    "64",
    "--data.global_batch_size",
    "4",
    "--data.micro_batch_size",
    "2",
    "--optim.schedule.warmup_steps",
    "1",
    "--checkpoint.interval",
    "10",
    "--log.interval",
    "1",
    "--log.plot_interval",
    "1000",
    "--dtype",
    "fp32",
    "--device",
    "cpu",
]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / script), *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(converted 1-2-1 recurrent model, data packed with its tokenizer)."""
    root = tmp_path_factory.mktemp("retrofit")
    llama = make_tiny_llama(root, n_layers=4)
    out = root / "tinyllama-1-2-1"
    result = _run(
        "utils/convert_hf.py",
        "--arch",
        "llama",
        "--model_path",
        str(llama),
        "--prelude_size",
        "1",
        "--start_index",
        "1",
        "--block_size",
        "2",
        "--coda_size",
        "1",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    data = root / "data"
    result = _run(
        "preprocess_data_packing.py",
        "--tokenizer",
        str(out),
        "--tasks",
        "copy",
        "--num_docs",
        "120",
        "--seq_len",
        "64",
        "--out_dir",
        str(data),
    )
    assert result.returncode == 0, result.stderr
    return out, data


def _saved_model_fields(run_dir) -> dict:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["model"]


def test_two_phase_retrofit_runs_and_keeps_the_converted_fields(converted, tmp_path):
    model_dir, data = converted
    source = saved_config(model_dir)
    phase1 = _run(
        "train.py",
        "--config",
        "configs/retrofit_two_phase.yaml",
        "--init_from",
        str(model_dir),
        "--data.path",
        str(data),
        "--data.tokenizer",
        str(model_dir),
        "--out_dir",
        str(tmp_path),
        *SMALL,
    )
    assert phase1.returncode == 0, phase1.stderr[-3000:]
    assert f"[init] weights from {model_dir}" in phase1.stderr
    run1 = tmp_path / "retrofit_tinyllama_phase1"
    fields = _saved_model_fields(run1)
    # The conversion's shape and runtime fields, not the tiny preset's (d_model 128, vocab 320, context 256,
    # random initial state); default_num_steps 4 is set by the phase config itself, so it wins.
    assert (fields["d_model"], fields["vocab_size"], fields["n_kv_heads"]) == (64, TINY_VOCAB, 2)
    assert fields["max_seq_len"] == source.max_seq_len and fields["init_state"] == source.init_state
    assert fields["default_num_steps"] == 4
    checkpoint = sorted((run1 / "checkpoints").glob("step_*[0-9]"))[-1]  # the final one, as documented

    phase2 = _run(
        "train.py",
        "--config",
        "configs/retrofit_two_phase.yaml",
        "--config",
        "configs/retrofit_phase2.yaml",
        "--init_from",
        str(checkpoint),
        "--data.path",
        str(data),
        "--data.tokenizer",
        str(model_dir),
        "--out_dir",
        str(tmp_path),
        *SMALL,
    )
    assert phase2.returncode == 0, phase2.stderr[-3000:]
    assert f"[init] weights from {checkpoint}" in phase2.stderr
    run2 = tmp_path / "retrofit_tinyllama_phase2"
    assert _saved_model_fields(run2) == fields
    # Phase 2 starts from phase 1's weights, so its first loss is phase 1's last, not phase 1's first.
    losses1, losses2 = (
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
        for run in (run1, run2)
    )
    assert abs(losses2[0] - losses1[-1]) < abs(losses2[0] - losses1[0])


def test_init_from_names_a_flag_that_changes_the_shape(converted, tmp_path):
    model_dir, data = converted
    shape = run_train_in_process(
        [
            "--init_from",
            str(model_dir),
            "--model.d_model",
            "128",
            "--data.path",
            str(data),
            "--out_dir",
            str(tmp_path),
            "--run_name",
            "shape",
            *SMALL,
        ]
    )
    assert shape.returncode == 2 and len(shape.stderr.strip().splitlines()) == 1, shape.stderr
    assert "--model.d_model 128 (the model has 64)" in shape.stderr
    assert not (tmp_path / "shape").exists()


def test_eval_hub_scores_the_conversion(converted, tmp_path):
    model_dir, data = converted
    hub = _run(
        "eval_hub.py",
        "--checkpoint",
        str(model_dir),
        "--suite",
        "perplexity",
        "--data",
        str(data),
        "--max_rows",
        "4",
        "--num_steps",
        "1",
        "2",
        "--no_plots",
        "--device",
        "cpu",
        "--out_dir",
        str(tmp_path),
    )
    assert hub.returncode == 0, hub.stderr[-2000:]
    results = json.loads((tmp_path / "results_perplexity.json").read_text())["perplexity"]["results"]
    assert [r["depth"] for r in results] == [1, 2] and all(r["loss"] > 0 for r in results)
