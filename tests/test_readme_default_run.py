"""scripts/readme_default_run.py: the README's default-run numbers are generated from a run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "readme_default_run.py"


def _fake_run(run: Path) -> Path:
    """The three files the script reads, in the shapes train.py writes them."""
    run.mkdir(parents=True)
    (run / "summary.json").write_text(
        json.dumps(
            {
                "steps": 300,
                "first_loss": 5.77,
                "final_loss": 0.2012,
                "mean_tokens_per_s": 5812.4,
                "wall_time_s": 240.0,
                "eval": {"successor@r1": 1.0, "successor@r2": 1.0, "parity@r1": 0.5, "parity@r2": 0.453125},
            }
        )
    )
    (run / "eval.jsonl").write_text(
        json.dumps({"step": 150, "val_loss": {"r1": 9.0}})
        + "\n"
        + json.dumps({"step": 300, "val_loss": {"r1": 0.2761, "r2": 0.2744, "r4": 0.2741}})
        + "\n"
    )
    (run / "config.yaml").write_text("eval:\n  num_samples: 64\n")
    return run


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True)


def test_block_is_rewritten_from_the_run_and_check_detects_staleness(tmp_path):
    run = _fake_run(tmp_path / "default")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- default-run -->\nold numbers\n<!-- /default-run -->\nrest\n")
    assert _script("--run", str(run), "--readme", str(readme), "--check").returncode == 1
    assert _script("--run", str(run), "--readme", str(readme)).returncode == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- default-run -->\n") and text.endswith("<!-- /default-run -->\nrest\n")
    assert "old numbers" not in text
    assert "300 steps, 5,812 tokens/s, 4.0 minutes" in text and "from 5.77 to 0.20" in text
    assert "held-out loss 0.276 at r=1, 0.274 at r=2–4" in text  # the final evaluation, depths merged
    assert "successor 1.00 at r=1–2 (95% interval over depths [0.94, 1.00])" in text
    assert "parity 0.50 at r=1, 0.45 at r=2" in text and "64 problems" in text
    assert _script("--run", str(run), "--readme", str(readme), "--check").returncode == 0


def test_bad_input_is_one_line_and_leaves_the_readme(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    missing = _script("--run", str(tmp_path / "none"), "--readme", str(readme))
    assert missing.returncode == 2 and "has no summary.json" in missing.stderr
    no_markers = _script("--run", str(_fake_run(tmp_path / "run")), "--readme", str(readme))
    assert no_markers.returncode == 2 and "lacks the" in no_markers.stderr
    assert len(no_markers.stderr.strip().splitlines()) == 1 and readme.read_text() == "no markers\n"
