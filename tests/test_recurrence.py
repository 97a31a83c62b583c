import pytest

from recur.recurrence import RecurrenceConfig, RecurrenceSampler, ramp


@pytest.mark.parametrize("mean", [4, 8, 32])
def test_empirical_mean_matches_huginn_law(mean):
    sampler = RecurrenceSampler(RecurrenceConfig(mean_recurrence=mean, backprop_depth=8), total_steps=10_000)
    draws = [sampler(step) for step in range(10_000)]
    empirical = sum(d.total for d in draws) / len(draws)
    assert abs(empirical - (mean + 1)) / (mean + 1) < 0.02
    assert all(d.grad_steps <= min(8, mean) and d.grad_steps >= 1 for d in draws)
    assert all(d.no_grad_steps == max(d.total - d.backprop_depth, 0) for d in draws)


def test_draws_identical_across_instances_and_seed_sensitive():
    cfg = RecurrenceConfig(mean_recurrence=8, backprop_depth=4, mean_schedule="1-sqrt", seed=3)
    a = [RecurrenceSampler(cfg, 500)(s) for s in range(500)]
    resumed = RecurrenceSampler(cfg, 500)
    assert a[250:] == [resumed(s) for s in range(250, 500)]
    other = RecurrenceSampler(RecurrenceConfig(mean_recurrence=8, backprop_depth=4, seed=4), 500)
    assert [d.total for d in a[200:]] != [other(s).total for s in range(200, 500)]


@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_schedules_hit_start_and_end_exactly(shape):
    values = [ramp(step, 1000, 2, 32, 0.3, shape) for step in range(1001)]
    assert values[0] == 2 and values[300] == 32 and values[-1] == 32
    assert values == sorted(values)
    assert ramp(0, 1000, 2, 32, 0.3, "constant") == 32


def test_backprop_depth_clipped_to_scheduled_mean():
    cfg = RecurrenceConfig(mean_recurrence=16, backprop_depth=8, mean_schedule="linear", mean_warmup=0.5)
    sampler = RecurrenceSampler(cfg, 100)
    for step in range(100):
        mean, depth = sampler.schedule(step)
        assert depth == min(8, mean)
        assert sampler(step).grad_steps <= depth


def test_fixed_sampling_and_cap():
    fixed = RecurrenceSampler(RecurrenceConfig(sampling="fixed", mean_recurrence=6, backprop_depth=2), 10)
    assert all((d.no_grad_steps, d.grad_steps) == (4, 2) for d in map(fixed, range(10)))
    capped = RecurrenceSampler(RecurrenceConfig(mean_recurrence=32, max_recurrence=20), 1000)
    assert max(capped(s).total for s in range(1000)) == 20


def test_single_pass_phase_then_the_curricula_as_if_the_run_started_there():
    cfg = dict(mean_recurrence=8, backprop_depth=4, mean_schedule="1-sqrt", mean_warmup=0.5)
    staged = RecurrenceSampler(RecurrenceConfig(**cfg, single_pass_fraction=0.4), 100)
    rest = RecurrenceSampler(RecurrenceConfig(**cfg), 60)
    assert all(
        (staged(s).no_grad_steps, staged(s).grad_steps, staged.expected_total(s)) == (0, 1, 1.0) for s in range(40)
    )
    assert [staged.schedule(40 + j) for j in range(60)] == [rest.schedule(j) for j in range(60)]
    assert staged.schedule(40) == (1, 1) and staged.schedule(99) == (8, 4)
    assert staged(99).total > 1 or staged(98).total > 1  # sampled again after the phase


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(sampling="fixed", mean_recurrence=2, backprop_depth=4), "exceeds the fixed recurrence"),
        (dict(mean_schedule="cosine"), "--recurrence.mean_schedule"),
        (dict(mean_recurrence=0), "--recurrence.mean_recurrence must be >= 1"),
        (dict(single_pass_fraction=1.0), "--recurrence.single_pass_fraction must lie in"),
    ],
)
def test_bad_recurrence_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecurrenceSampler(RecurrenceConfig(**kwargs), 10)
