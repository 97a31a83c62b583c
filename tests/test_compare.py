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


def results(
    variant: str, acc_by_depth: dict[int, tuple[float, float]], ppl_by_depth: dict[int, float], n: int = 10
) -> dict:
    """A schema-valid results_all.json: parity at 8 (ID) and 16 (OOD) bits per depth, n problems per cell.
    The cells have no ci_low / ci_high, like files written before them: compare derives intervals from counts."""
    rows = [
        {
            "depth": d,
            "difficulty": level,
            "in_distribution": level == 8,
            "accuracy": acc,
            "correct": round(acc * n),
            "num_samples": n,
            "mean_steps": float(d),
            "max_new_tokens": 9,
        }
        for d, (id_acc, ood_acc) in acc_by_depth.items()
        for level, acc in ((8, id_acc), (16, ood_acc))
    ]
    data = {
        "schema_version": SCHEMA_VERSION,
        "suite": "all",
        "metadata": {
            "created": "now",
            "commit": "abc",
            "commit_dirty": False,
            "seed": 0,
            "grid_version": GRID_VERSION,
            "device": "cpu",
            "checkpoint": {"path": "x", "kind": "dcp", "run_dir": None, "step": 5, "tokens": 1},
            "model": {"variant": variant, "params": 10, "config": {}, "looped": variant != "baseline"},
            "tokenizer": "byte",
            "depths": sorted(acc_by_depth),
            "depth_note": None,
            "decoding": {
                "strategy": "greedy",
                "max_new_tokens": 9,
                "stop_ids": [1],
                "kv_cache": True,
                "exit_rule": None,
            },
        },
        "algorithmic": {
            "tasks": {"parity": {"knob": "bits", "train_difficulty": 8, "results": rows}},
            "summary": [{"depth": d, "in_distribution": a, "ood": o} for d, (a, o) in acc_by_depth.items()],
            "skipped": [],
        },
        "longctx": {
            "results": [],
            "summary": [{"context_length": 256, "depth": d, "accuracy": 0.5} for d in acc_by_depth],
            "skipped": [],
        },
        "perplexity": {
            "data": "val",
            "rows": 4,
            "results": [{"depth": d, "loss": 1.0, "perplexity": p, "tokens": 9} for d, p in ppl_by_depth.items()],
        },
    }
    validate_results(data)
    return data


def make_run(root: Path, name: str, variant: str, wall: float, accs: dict, ppls: dict, n: int = 10) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "results_all.json").write_text(json.dumps(results(variant, accs, ppls, n)))
    (run / "summary.json").write_text(json.dumps({"wall_time_s": wall, "mean_tokens_per_s": 1000.0, "final_loss": 1.0}))
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
    proc = subprocess.run(
        [sys.executable, "compare_runs.py", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "does not exist" in proc.stderr


def _set_perplexity_rows(run: Path, rows: int) -> None:
    path = run / "eval" / "results_all.json"
    data = json.loads(path.read_text())
    data["perplexity"]["rows"] = rows
    path.write_text(json.dumps(data))


def test_runs_evaluated_on_different_data_are_flagged(tmp_path):
    """134 held-out rows against 16, 64 problems per cell against 10: numbers that must not be compared."""
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0}, n=64)
    loop = make_run(tmp_path, "loop", "recurrent", 100.0, {1: (0.6, 0.1)}, {1: 9.0}, n=10)
    _set_perplexity_rows(base, 134)
    _set_perplexity_rows(loop, 16)
    proc = subprocess.run(
        [sys.executable, "compare_runs.py", str(base), str(loop), "--out_dir", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("compare_runs.py: warning: ")]
    assert len(warnings) == 2, proc.stderr
    assert "held-out perplexity sets differ" in warnings[0]
    assert "base: 134 rows of val; loop: 16 rows of val" in warnings[0]
    assert "algorithmic sample counts differ" in warnings[1] and "base: n=64; loop: n=10" in warnings[1]
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["warnings"] == [w.removeprefix("compare_runs.py: warning: ") for w in warnings]
    assert (tmp_path / "out" / "compare.md").read_text().startswith("**Warning:** held-out perplexity sets differ")


def test_runs_evaluated_alike_get_no_warning(tmp_path):
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0})
    loop = make_run(tmp_path, "loop", "recurrent", 100.0, {1: (0.6, 0.1)}, {1: 9.0})
    assert compare_runs([base, loop], tmp_path / "out")["warnings"] == []


def md_row(out: Path, table_header: str, name: str) -> str:
    """The line of run `name` in the compare.md table whose header starts with `table_header`."""
    lines = (out / "compare.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(table_header))
    return next(line for line in lines[start:] if line.startswith(f"| {name} |"))


def test_small_difference_on_few_samples_is_not_significant(tmp_path):
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0})
    loop = make_run(tmp_path, "loop", "recurrent", 100.0, {1: (0.6, 0.2)}, {1: 10.0})
    report = compare_runs([base, loop], tmp_path / "out")
    row = report["runs"][1]
    assert row["algorithmic_id_counts"] == {
        "correct": 6,
        "num_samples": 10,
        "ci_low": pytest.approx(0.3127, abs=1e-4),
        "ci_high": pytest.approx(0.8318, abs=1e-4),
    }
    assert row["significant"] == {"algorithmic_id": False, "ood": False, "per_task": {"parity": False}}
    c = row["criteria"]
    # Pass/fail is unchanged (+0.10 >= 0.05, 0.2 > 0.1); the passes are flagged as resting on noise.
    assert c["algorithmic_gain"]["pass"] and c["algorithmic_gain"]["significant"] is False
    assert c["better_ood"]["pass"] and c["better_ood"]["significant"] is False and c["wins"] is True
    assert md_row(tmp_path / "out", "| run | algorithmic gain", "loop") == (
        "| loop | +0.100 pass (n.s.) | +0.100 pass (n.s.) | 1.00 pass | 1.00 pass | pass (n.s.) |"
    )
    assert md_row(tmp_path / "out", "| run | variant", "loop").startswith(
        "| loop | recurrent | 0.600 (1) [0.31, 0.83] n=10 (n.s.) | 0.200 (1) [0.06, 0.51] n=10 (n.s.) |"
    )
    assert md_row(tmp_path / "out", "| run | parity", "loop") == "| loop | 0.600 [0.31, 0.83] n=10 (n.s.) |"
    assert "(n.s.)" not in md_row(tmp_path / "out", "| run | variant", "base")  # the reference itself


def test_big_difference_on_many_samples_is_significant(tmp_path):
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0}, n=1000)
    loop = make_run(tmp_path, "loop", "recurrent", 100.0, {1: (0.7, 0.3)}, {1: 10.0}, n=1000)
    report = compare_runs([base, loop], tmp_path / "out")
    row = report["runs"][1]
    assert row["significant"] == {"algorithmic_id": True, "ood": True, "per_task": {"parity": True}}
    assert row["criteria"]["algorithmic_gain"]["significant"] and row["criteria"]["better_ood"]["significant"]
    for header in ("| run | variant", "| run | parity", "| run | algorithmic gain"):
        assert "(n.s.)" not in md_row(tmp_path / "out", header, "loop")
    assert "0.700 (1) [0.67, 0.73] n=1000" in md_row(tmp_path / "out", "| run | variant", "loop")


def test_means_pool_the_counts_of_their_cells(tmp_path):
    base = make_run(tmp_path, "base", "baseline", 100.0, {1: (0.5, 0.1)}, {1: 10.0})
    path = base / "eval" / "results_all.json"
    data = json.loads(path.read_text())
    # A second task with 90 OOD problems: the pooled OOD count is 1/10 + 9/90 = 10/100.
    data["algorithmic"]["tasks"]["copy"] = {
        "knob": "length",
        "train_difficulty": 16,
        "results": [
            {
                "depth": 1,
                "difficulty": 16,
                "in_distribution": True,
                "accuracy": 0.5,
                "correct": 5,
                "num_samples": 10,
                "mean_steps": 1.0,
                "max_new_tokens": 9,
            },
            {
                "depth": 1,
                "difficulty": 64,
                "in_distribution": False,
                "accuracy": 0.1,
                "correct": 9,
                "num_samples": 90,
                "mean_steps": 1.0,
                "max_new_tokens": 9,
            },
        ],
    }
    validate_results(data)
    path.write_text(json.dumps(data))
    row = compare_runs([base], tmp_path / "out")["runs"][0]
    assert (row["ood_counts"]["correct"], row["ood_counts"]["num_samples"]) == (10, 100)
    assert (row["algorithmic_id_counts"]["correct"], row["algorithmic_id_counts"]["num_samples"]) == (10, 20)
    assert row["per_task_counts"]["copy"]["num_samples"] == 10
