"""scripts/recall_probe.py documents: every supervised digit is the root its query's chain leads to."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from recall_probe import FORMATS, TOKENIZER, chain_document  # noqa: E402


@pytest.mark.parametrize("fmt", FORMATS)
def test_supervised_digits_follow_the_bindings(fmt):
    rng = random.Random(0)
    for hops in (0, 1, 3):
        ids, mask = chain_document(rng, pairs=3, hops=hops, queries=5, fmt=fmt)
        assert len(ids) == len(mask)
        text = TOKENIZER.decode(ids)
        bindings = dict(re.findall(r"(\w)=(\w)", text.split("?")[0]))
        questions = re.findall(r"\?(\w)", text)
        digits = [i for i, m in zip(ids, mask) if m and ord("0") <= i <= ord("9")]
        assert len(questions) == len(digits) == 5
        for name, digit in zip(questions, digits):
            value = name
            while not value.isdigit():
                value = bindings[value]
            assert chr(digit) == value
        # Supervised tokens are the answers only: digits, the end marker and, for echo, "name=".
        allowed = {TOKENIZER.end_id, *range(ord("0"), ord("9") + 1)} | ({ord("=")} | set(map(ord, questions))
                                                                           if fmt == "echo" else set())
        assert {i for i, m in zip(ids, mask) if m} <= allowed


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    """Three steps, save, three more, equals six straight: device calls can be chained without drift."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "recall_probe.py"
    base = [sys.executable, str(script), "--variant", "recurrent", "--d_model", "32", "--n_layers", "3",
            "--eval_interval", "3", "--eval_depths", "1", "--batch_size", "4", "--eval_hops", "0"]

    def last_step_line(steps: int, checkpoint: Path) -> str:
        out = subprocess.run(base + ["--steps", str(steps), "--checkpoint", str(checkpoint)], check=True,
                             capture_output=True, text=True).stdout
        return [line.rsplit(" ", 1)[0] for line in out.splitlines() if line.startswith("step ")][-1]

    straight = last_step_line(6, tmp_path / "a.pt")
    last_step_line(3, tmp_path / "b.pt")
    assert last_step_line(6, tmp_path / "b.pt") == straight
