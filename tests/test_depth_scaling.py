"""The depth-scaling experiment: its targets are decided correctly, and the one command runs end to end."""

import json
import os
import subprocess
import sys

from recur.eval.depth_scaling import Arm, depth_report, ood_difficulty, report_markdown
from recur.eval.schema import validate_results
from tests.train_helpers import REPO


def _sweep(looped: bool, losses: dict[int, float], chain: dict[tuple[int, int], int], n: int = 100) -> dict:
    """A minimal sweep results dict: held-out loss per depth and chain cells {(difficulty, depth): correct}."""
    results = [
        {
            "depth": depth,
            "difficulty": level,
            "in_distribution": level == 4,
            "accuracy": correct / n,
            "correct": correct,
            "num_samples": n,
            "ci_low": 0.0,
            "ci_high": 1.0,
        }
        for (level, depth), correct in chain.items()
    ]
    return {
        "metadata": {"model": {"looped": looped}},
        "perplexity": {"results": [{"depth": d, "loss": v} for d, v in losses.items()]},
        "algorithmic": {"tasks": {"chain": {"knob": "hops", "train_difficulty": 4, "results": results}}},
    }


def _arm(tmp_path, name: str, sweep: dict, losses=(2.0, 1.0), mean_recurrence: int = 8) -> Arm:
    run = tmp_path / name
    run.mkdir()
    lines = [
        {"step": i, "loss": loss, "skipped": False, "mean_recurrence": mean_recurrence} for i, loss in enumerate(losses)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return Arm(name, run, sweep)


def test_targets_pass_for_a_model_that_uses_depth_and_fail_for_one_that_ignores_it(tmp_path):
    assert ood_difficulty("chain") == 8
    base = _arm(tmp_path, "baseline", _sweep(False, {1: 1.0}, {(4, 1): 60, (8, 1): 30}))
    good = _arm(
        tmp_path, "good", _sweep(True, {1: 1.0, 8: 0.9, 64: 0.905}, {(4, 1): 50, (8, 1): 20, (8, 8): 60, (8, 64): 58})
    )
    flat = _arm(
        tmp_path,
        "flat",
        _sweep(True, {1: 1.0, 8: 0.99, 64: 1.3}, {(4, 1): 50, (8, 1): 30, (8, 8): 35, (8, 64): 10}),
        losses=(2.0, float("nan"), 1.0),
    )
    report = depth_report([base, good, flat])
    ok, bad = report["arms"]["good"]["targets"], report["arms"]["flat"]["targets"]
    assert ok["no_nonfinite_training_steps"] and ok["deep_stable"] and ok["depth_gain"]
    assert ok["ood"]["gain_over_r1"] and ok["ood"]["gain_over_baseline"] and ok["ood"]["best_depth"] == 8
    assert not bad["no_nonfinite_training_steps"] and not bad["deep_stable"] and not bad["depth_gain"]
    assert not bad["ood"]["gain_over_r1"] and not bad["ood"]["gain_over_baseline"]
    assert "targets" not in report["arms"]["baseline"]
    markdown = report_markdown(report)
    assert "| good | 8 (n=100) |" in markdown and "Wilson" in markdown


def _smoke(out, *flags: str) -> subprocess.CompletedProcess:
    """scripts/depth_scaling.py --smoke into `out` with `flags`, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(REPO / "scripts" / "depth_scaling.py"), "--smoke", "--out_dir", str(out), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)


def test_smoke_mode_runs_the_whole_experiment_on_cpu(tmp_path):
    out = tmp_path / "depth"
    done = _smoke(out, "--parallel", "2", "--tasks", "chain", "copy", "--sweep_tasks", "chain", "--retrofit", "1,2,1")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "depth_scaling.json").read_text())
    arms = {"baseline", "recurrent", "retrofit", "baseline_continued"}
    assert set(report["arms"]) == arms and report["failed"] == []
    assert set(report["arms"]["recurrent"]["loss"]) == {"1", "2", "4"}
    # The retrofit is the trained baseline looped (1/2/1 of its 4 layers), judged against the baseline trained on.
    looped = json.loads((out / "exported" / "retrofit" / "config.json").read_text())
    assert (looped["n_prelude"], looped["n_core"], looped["n_coda"], looped["adapter_init"]) == (1, 2, 1, "passthrough")
    assert report["arms"]["retrofit"]["targets"]["ood"]["baseline"] == "baseline_continued"
    assert report["arms"]["recurrent"]["targets"]["ood"]["baseline"] == "baseline"
    for name in arms:
        (sweep,) = out.glob(f"sweeps/sweep_{name}_step_*.json")
        validate_results(json.loads(sweep.read_text()), str(sweep))
    for figure in ("loss_vs_depth.png", "accuracy_vs_depth.png", "depth_scaling.md"):
        assert (out / figure).stat().st_size > 0
    markdown = (out / "depth_scaling.md").read_text()  # copy trained alongside chain, but only chain is swept
    assert "### chain: exact match" in markdown and "### copy" not in markdown
    # A rerun with another split keeps what it trained and reports it, but refuses to mix in another retrofit.
    other_split = _smoke(
        out, *"--tasks chain copy --sweep_tasks chain --retrofit 1,1,1 --only baseline retrofit".split()
    )
    assert other_split.returncode == 1 and "use a new --out_dir" in other_split.stderr, other_split.stderr[-2000:]
    assert json.loads((out / "depth_scaling.json").read_text())["failed"] == ["retrofit", "baseline_continued"]
    # A rerun into the same --out_dir with other data settings would compare arms trained on different data.
    rerun = _smoke(out, "--tasks", "chain", "successor")
    assert rerun.returncode == 2 and "use a new --out_dir" in rerun.stderr.strip().splitlines()[-1], rerun.stderr
