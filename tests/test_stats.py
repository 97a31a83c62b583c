"""Wilson intervals of accuracies: known values, the properties compare relies on, pooling, the schema."""

from __future__ import annotations

import pytest

from recur.eval.schema import ALGORITHMIC, schema_errors
from recur.eval.stats import intervals_overlap, pooled_counts, wilson_interval


def test_known_values():
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)  # mirror image of 0/10
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Newcombe (1998), method 3
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("n", [1, 2, 7, 10, 64, 1000])
def test_interval_contains_estimate_and_lies_in_unit_range(n):
    for correct in range(n + 1) if n <= 64 else (0, 1, n // 2, n - 1, n):
        low, high = wilson_interval(correct, n)
        assert 0.0 <= low <= correct / n <= high <= 1.0


def test_interval_shrinks_with_more_samples():
    widths = [high - low for low, high in (wilson_interval(n // 4, n) for n in (8, 40, 200, 1000, 5000))]
    assert all(a > b for a, b in zip(widths, widths[1:]))
    wider = wilson_interval(5, 10, z=2.576)  # a 99% interval contains the 95% one
    assert wider[0] < wilson_interval(5, 10)[0] and wider[1] > wilson_interval(5, 10)[1]


def test_bad_counts_are_refused():
    for correct, n in ((11, 10), (-1, 10), (0, -1)):
        with pytest.raises(ValueError, match="0 <= correct <= n"):
            wilson_interval(correct, n)


def test_overlap():
    assert intervals_overlap((0.1, 0.4), (0.3, 0.9)) and intervals_overlap((0.3, 0.9), (0.1, 0.4))
    assert intervals_overlap((0.1, 0.4), (0.4, 0.5))  # touching counts as overlapping: not significant
    assert not intervals_overlap((0.1, 0.2), (0.3, 0.4)) and not intervals_overlap((0.3, 0.4), (0.1, 0.2))


def test_pooled_counts_sum_correct_and_samples():
    pooled = pooled_counts([{"correct": 9, "num_samples": 10}, {"correct": 10, "num_samples": 90}])
    assert pooled["correct"] == 19 and pooled["num_samples"] == 100  # 0.19, not the cells' mean 0.506
    assert (pooled["ci_low"], pooled["ci_high"]) == wilson_interval(19, 100)
    assert pooled_counts([]) is None


def test_schema_takes_cells_with_and_without_intervals():
    cell = {
        "depth": 1,
        "difficulty": 8,
        "in_distribution": True,
        "accuracy": 0.5,
        "correct": 5,
        "num_samples": 10,
        "mean_steps": 1.0,
        "max_new_tokens": 9,
    }
    section = {
        "tasks": {"parity": {"knob": "bits", "train_difficulty": 8, "results": [cell]}},
        "summary": [],
        "skipped": [],
    }
    assert schema_errors(section, ALGORITHMIC) == []  # a file from before ci_low / ci_high
    cell.update(ci_low=0.2366, ci_high=0.7634)
    assert schema_errors(section, ALGORITHMIC) == []
    cell["ci_low"] = "narrow"
    assert any("ci_low" in e for e in schema_errors(section, ALGORITHMIC))
