"""Split curriculum (phase switch at the token budget, exact resume), generated text."""

from __future__ import annotations

import pytest
import torch

from recur.data.curriculum import PhasedLoader
from recur.data.textgen import generate_stories


class CountingLoader:
    """Stand-in phase loader: yields {"input_ids": [[tag, i]]} with a resumable position."""

    def __init__(self, tag: int):
        self.tag, self.position = tag, 0

    def __iter__(self):
        while True:
            self.position += 1
            yield {"input_ids": torch.tensor([[self.tag, self.position]])}

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def make_loader(alg_tokens=30, total_tokens=100) -> PhasedLoader:
    return PhasedLoader(
        [CountingLoader(1), CountingLoader(2)],
        micro_batches_per_step=2,
        tokens_per_step=10,
        alg_tokens=alg_tokens,
        total_tokens=total_tokens,
    )


def test_phases_switch_at_step_boundary_and_stop_at_total():
    tags = [int(batch["input_ids"][0, 0]) for batch in make_loader()]
    assert tags == [1] * 6 + [2] * 14  # 3 steps of 2 micro-batches, then 7 steps


def test_resume_continues_exactly():
    loader = make_loader()
    stream = iter(loader)
    first = [next(stream) for _ in range(8)]  # 4 steps: into phase 2
    state = loader.state_dict()
    rest = [b["input_ids"].tolist() for b in stream]
    resumed = make_loader()
    resumed.load_state_dict(state)
    assert [b["input_ids"].tolist() for b in resumed] == rest
    assert len(first) + len(rest) == 20


def test_resume_with_other_budget_is_refused():
    loader = make_loader()
    with pytest.raises(ValueError, match="alg_tokens"):
        make_loader(alg_tokens=40).load_state_dict(loader.state_dict())


def test_stories_are_deterministic_and_varied():
    a, b = generate_stories(50, seed=1), generate_stories(50, seed=1)
    assert a == b and len({d["text"] for d in a}) > 40
    assert generate_stories(5, seed=2) != a[:5]
    for doc in a:  # a named character is introduced and then referred to by name
        name = doc["text"].split("named ")[1].split(".")[0]
        assert doc["text"].count(name) >= 4
