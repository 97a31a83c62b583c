"""scripts/recall_probe.py documents: every supervised digit is the root its query's chain leads to."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from recall_probe import FORMATS, TOKENIZER, chain_document  # noqa: E402


@pytest.mark.parametrize("span", [(0, 0), (8, 8), (0, 8)])
@pytest.mark.parametrize("fmt", FORMATS)
def test_supervised_digits_follow_the_bindings(fmt, span):
    rng = random.Random(0)
    for hops in (0, 1, 3):
        ids, mask = chain_document(rng, pairs=3, hops=hops, queries=5, fmt=fmt, span=span)
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
        allowed = {TOKENIZER.end_id, *range(ord("0"), ord("9") + 1)} | (
            {ord("=")} | set(map(ord, questions)) if fmt == "echo" else set()
        )
        assert {i for i, m in zip(ids, mask) if m} <= allowed


def _depth(text: str, name: str) -> int:
    bindings = dict(re.findall(r"(\w)=(\w)", text.split("?")[0]))
    depth = 0
    while not name.isdigit():
        name, depth = bindings[name], depth + 1
    return depth - 1


def test_span_asks_the_given_depth_in_prompts_as_long_as_the_deepest_level():
    """With a span up to 8, a 0-hop and an 8-hop question come in prompts of one length distribution, and
    the first question is exactly `hops` hops from its root: depth is the only thing that changes."""
    lengths = {}
    for hops in (0, 4, 8):
        rng = random.Random(hops)
        docs = [chain_document(rng, pairs=3, hops=hops, queries=1, fmt="chat", span=(8, 8)) for _ in range(50)]
        texts = [TOKENIZER.decode(ids) for ids, _ in docs]
        assert all(_depth(text, re.findall(r"\?(\w)", text)[0]) == hops for text in texts)
        lengths[hops] = {len(ids) for ids, _ in docs}
    assert lengths[0] == lengths[4] == lengths[8] and len(lengths[0]) == 1
    rng = random.Random(0)
    without = chain_document(rng, pairs=3, hops=2, queries=1, fmt="chat")[0]
    assert TOKENIZER.decode(without).count("=") == 3 * 3  # no span: chains as long as the question's hops


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    """Three steps, save, three more, equals six straight: device calls can be chained without drift."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "recall_probe.py"
    base = [
        sys.executable,
        str(script),
        "--variant",
        "recurrent",
        "--d_model",
        "32",
        "--n_layers",
        "3",
        "--eval_interval",
        "3",
        "--eval_depths",
        "1",
        "--batch_size",
        "4",
        "--eval_hops",
        "0",
    ]

    def last_step_line(steps: int, checkpoint: Path) -> str:
        out = subprocess.run(
            base + ["--steps", str(steps), "--checkpoint", str(checkpoint)], check=True, capture_output=True, text=True
        ).stdout
        return [line.rsplit(" ", 1)[0] for line in out.splitlines() if line.startswith("step ")][-1]

    straight = last_step_line(6, tmp_path / "a.pt")
    last_step_line(3, tmp_path / "b.pt")
    assert last_step_line(6, tmp_path / "b.pt") == straight


def test_retrofit_reproduces_the_baseline_at_one_iteration(tmp_path):
    """A 4-layer baseline loaded into recurrent 1/2/1 (pre-norm blocks, passthrough adapter) gives the same
    logits at r = 1: the loop starts from the trained model, as in the retrofitting paper. The passthrough
    adapter ignores the state, so every depth starts equal; training gives the state half its weights."""
    import torch
    from recall_probe import retrofit

    from recur.models import create_model

    shape = dict(d_model=32, n_layers=4, n_heads=4, vocab_size=TOKENIZER.vocab_size, max_seq_len=64)
    baseline = create_model("tiny", variant="baseline", **shape).eval()
    looped = create_model(
        "tiny", variant="recurrent", block_norm="pre", adapter_init="passthrough", init_state="zeros", **shape
    ).eval()
    retrofit(looped, baseline.state_dict())
    x = torch.randint(0, TOKENIZER.vocab_size, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(looped(x, num_steps=1).logits, baseline(x).logits)
        torch.testing.assert_close(looped(x, num_steps=3).logits, baseline(x).logits)
