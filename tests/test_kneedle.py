import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recur.convert.kneedle import find_knee, find_knees

X = np.arange(20.0)


@pytest.mark.parametrize(
    "curve,direction,y,knee",
    [
        ("concave", "increasing", np.where(X < 7, 3 * X, 21 + 0.2 * (X - 7)), 7),
        ("convex", "decreasing", np.where(X < 7, 21 - 3 * X, -0.2 * (X - 7)), 7),
        ("convex", "increasing", np.where(X < 12, 0.2 * X, 2.4 + 3 * (X - 12)), 12),
        ("concave", "decreasing", np.where(X < 12, 10 - 0.2 * X, 7.6 - 3 * (X - 12)), 12),
    ],
)
def test_piecewise_linear_knee_in_every_orientation(curve, direction, y, knee):
    assert find_knees(X, y, curve, direction) == [knee]
    assert find_knee(X, y, curve, direction) == knee


def test_matches_the_reference_example_of_the_paper_implementation():
    # kneed's documented example: knee of -1/(x+0.1)+5 on 10 points of [0, 1] is x = 0.222 (index 2).
    x = np.linspace(0.0, 1.0, 10)
    assert find_knees(x, -1.0 / (x + 0.1) + 5) == [2]


def test_smooth_curves_bend_where_expected():
    x = np.linspace(0.1, 10, 100)
    knee = find_knee(x, 1 / x, "convex", "decreasing")
    assert 0.6 < x[knee] < 1.6  # 1/x bends sharply around x = 1 on this range
    x = np.linspace(1, 100, 100)
    knee = find_knee(x, np.log(x), "concave", "increasing")
    assert 10 < x[knee] < 35
    # Non-uniform x: the same curve sampled densely at the start must give the same bend in x units.
    xs = np.concatenate([np.linspace(1, 20, 60, endpoint=False), np.linspace(20, 100, 40)])
    assert abs(xs[find_knee(xs, np.log(xs))] - x[knee]) < 6


def test_no_knee_on_flat_or_straight_curves():
    assert find_knees(X, np.ones_like(X)) == []
    assert find_knees(X, 3 * X + 1) == []
    assert find_knee(X, np.full_like(X, 5.0), "convex", "decreasing") is None


@pytest.mark.parametrize(
    "x,y,kwargs,match",
    [
        ([0, 1], [0, 1], {}, "at least 3 points"),
        ([0, 2, 1], [0, 1, 2], {}, "strictly increasing"),
        ([0, 1, 2], [0, 1], {}, "equal length"),
        ([0, 1, 2], [0, np.nan, 2], {}, "finite"),
        ([0, 1, 2], [0, 1, 2], {"curve": "wavy"}, "curve must be"),
        ([0, 1, 2], [0, 1, 2], {"direction": "up"}, "direction must be"),
        ([0, 1, 2], [0, 1, 2], {"S": -1.0}, "S must be >= 0"),
        ([0, 1, 2], [0, 1, 2], {"smooth_window": 2}, "odd integer"),
    ],
)
def test_bad_input_raises_clear_error(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        find_knees(x, y, **kwargs)


def test_select_first_versus_prominent():
    # Rise, plateau, steep rise, plateau: bends at 5 (gentle) and 12 (after the steep rise).
    y = np.piecewise(
        X,
        [X < 5, (X >= 5) & (X < 9), (X >= 9) & (X < 12), X >= 12],
        [lambda v: v, lambda v: 5 + 0.1 * (v - 5), lambda v: 5.4 + 2 * (v - 9), lambda v: 11.4 + 0.01 * (v - 12)],
    )
    assert find_knees(X, y) == [5, 12]
    assert find_knee(X, y, select="first") == 5
    # The prominent knee is the one furthest above the diagonal of the normalised curve.
    d = y / y.max() - X / X.max()
    assert d[12] > d[5]
    assert find_knee(X, y, select="prominent") == 12
    with pytest.raises(ValueError, match="select must be"):
        find_knee(X, y, select="last")


def test_smoothing_recovers_knee_of_noisy_curve():
    rng = np.random.default_rng(0)
    y = np.where(X < 7, 21 - 3 * X, -0.2 * (X - 7)) + rng.normal(0, 0.6, X.size)
    knee = find_knee(X, y, "convex", "decreasing", smooth_window=3)
    assert knee is not None and abs(knee - 7) <= 1


piecewise = st.tuples(st.integers(5, 30), st.floats(0.15, 0.85), st.floats(1.5, 20.0))


def _concave_increasing(n: int, frac: float, ratio: float) -> np.ndarray:
    x = np.arange(float(n))
    k = max(1, min(n - 2, int(frac * n)))
    return np.where(x < k, ratio * x, ratio * k + (x - k))


@settings(max_examples=60, deadline=None)
@given(piecewise)
def test_flips_map_knees_consistently(params):
    """A vertical flip turns concave-increasing into convex-decreasing and a horizontal mirror into
    concave-decreasing; the knees must follow exactly."""
    y = _concave_increasing(*params)
    x = np.arange(float(y.size))
    base = find_knees(x, y)
    assert find_knees(x, -y, "convex", "decreasing") == base
    assert find_knees(x, y[::-1], "concave", "decreasing") == sorted(y.size - 1 - i for i in base)
    assert find_knees(x, -y[::-1], "convex", "increasing") == sorted(y.size - 1 - i for i in base)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=3, max_size=40), st.floats(0, 3), st.floats(0, 3))
def test_higher_sensitivity_only_removes_knees(ys, s1, s2):
    lo, hi = sorted((s1, s2))
    x = np.arange(float(len(ys)))
    assert set(find_knees(x, ys, S=hi)) <= set(find_knees(x, ys, S=lo))
