"""compare_runs: table, figures and the ReLSM success criteria from run directories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recur.eval.compare import compare_runs
from recur.eval.schema import GRID_VERSION, SCHEMA_VERSION, validate_results

REPO = Path(__file__).resolve().parents[1]


def results(variant: str, acc_by_depth: dict[int, tuple[float, float]], ppl_by_depth: dict[int, float]) -> dict:
    """A schema-valid results_all.json: parity at 8 (ID) and 16 (OOD) bits per depth."""
    rows = [{"depth": d, "difficulty": level, "in_distribution": level == 8, "accuracy": acc, "correct": int(acc * 10),
             "num_samples": 10, "mean_steps": float(d), "max_new_tokens": 9}
            for d, (id_acc, ood_acc) in acc_by_depth.items() for level, acc in ((8, id_acc), (16, ood_acc))]
    data = {
        "schema_version": SCHEMA_VERSION, "suite": "all",
        "metadata": {"created": "now", "commit": "abc", "commit_dirty": False, "seed": 0, "grid_version": GRID_VERSION,
                     "device": "cpu", "checkpoint": {"path": "x", "kind": "dcp", "run_dir": None, "step": 5, "tokens": 1},
                     "model": {"variant": variant, "params": 10, "config": {}, "looped": variant != "baseline"},
                     "tokenizer": "byte", "depths": sorted(acc_by_depth), "depth_note": None,
                     "decoding": {"strategy": "greedy", "max_new_tokens": 9, "stop_ids": [1], "kv_cache": True,
                                  "exit_rule": None}},
        "algorithmic": {"tasks": {"parity": {"knob": "bits", "train_difficulty": 8, "results": rows}},
                        "summary": [{"depth": d, "in_distribution": a, "ood": o} for d, (a, o) in acc_by_depth.items()],
                        "skipped": []},
        "longctx": {"results": [], "summary": [{"context_length": 256, "depth": d, "accuracy": 0.5}
                                               for d in acc_by_depth], "skipped": []},
        "perplexity": {"data": "val", "rows": 4, "results": [{"depth": d, "loss": 1.0, "perplexity": p, "tokens": 9}
                                                             for d, p in ppl_by_depth.items()]},
    }
    validate_results(data)
    return data


def make_run(root: Path, name: str, variant: str, wall: float, accs: dict, ppls: dict) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results_all.json").write_text(json.dumps(results(variant, accs, ppls)))
    (run / "summary.json").write_text(json.dumps({"wall_time_s": wall, "mean_tokens_per_s": 1000.0,
                                                  "final_loss": 1.0}))
    return run


def test_success_criteria_per_variant(tmp_path):
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.50, 0.10)}, {1: 10.0})
    good = make_run(tmp_path, "loop", "recurrent", 150.0, {1: (0.3, 0.0), 4: (0.60, 0.30)}, {1: 30.0, 4: 12.0})
    slow = make_run(tmp_path, "slow", "shared_loop", 250.0, {2: (0.52, 0.05)}, {2: 40.0})
    report = compare_runs([base, good, slow], tmp_path / "out")
    assert report["baseline"] == "base"
    rows = {r["name"]: r for r in report["runs"]}
    c = rows["loop"]["criteria"]
    assert rows["loop"]["algorithmic_id_depth"] == 4 and rows["loop"]["perplexity_depth"] == 4
    assert c["algorithmic_gain"]["value"] == pytest.approx(0.10) and c["algorithmic_gain"]["pass"]
    assert c["better_ood"]["pass"] and c["train_time"]["value"] == pytest.approx(1.5) and c["train_time"]["pass"]
    assert c["no_ppl_collapse"]["value"] == pytest.approx(1.2) and c["wins"] is True
    s = rows["slow"]["criteria"]
    assert not s["algorithmic_gain"]["pass"] and not s["better_ood"]["pass"]
    assert not s["train_time"]["pass"] and not s["no_ppl_collapse"]["pass"] and s["wins"] is False
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| loop | recurrent |" in md and "pass" in md and "FAIL" in md
    assert json.loads((tmp_path / "out" / "compare.json").read_text()) == report
    for name in ("compare_accuracy.png", "compare_ood.png", "compare_needle.png", "compare_perplexity.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_data_is_reported_not_guessed(tmp_path):
    loop = make_run(tmp_path, "loop", "recurrent", 150.0, {1: (0.6, 0.3)}, {1: 12.0})
    report = compare_runs([loop], tmp_path / "out")
    assert report["baseline"] is None and "no baseline" in report["runs"][0]["criteria"]["reason"]
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0})
    (base / "summary.json").unlink()
    report = compare_runs([base, loop], tmp_path / "out2")
    crit = report["runs"][1]["criteria"]
    assert crit["train_time"]["pass"] is None and crit["wins"] is None


def test_bad_run_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        compare_runs([tmp_path / "nope"], tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="run eval_hub.py"):
        compare_runs([tmp_path / "empty"], tmp_path / "out")
    proc = subprocess.run([sys.executable, "compare_runs.py", str(tmp_path / "nope")], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr
