"""Every named size instantiates on the meta device with the parameter count its name promises."""

from __future__ import annotations

import pytest

from recur.models.presets import NAMED_COUNT, PRESETS, preset_config, preset_counts


@pytest.mark.parametrize("size", list(NAMED_COUNT))
def test_named_count_within_ten_percent(size):
    target, convention = NAMED_COUNT[size]
    counts = preset_counts(size, "baseline")
    assert abs(counts[convention] - target) <= 0.10 * target, f"{size}: {convention} {counts[convention]:,}"


@pytest.mark.parametrize("variant", ["recurrent", "shared_loop"])
def test_looped_variants_keep_the_named_shape(variant):
    """A looped variant is the baseline's layers plus exactly its own extras: two more RMSNorm gains per
    sandwich block and, for `recurrent`, the 2d -> d adapter."""
    cfg = preset_config("nano", variant).resolved()
    d = cfg.d_model
    extras = cfg.n_layers * 2 * d + (2 * d * d if variant == "recurrent" else 0)
    assert preset_counts("nano", variant)["total"] == preset_counts("nano", "baseline")["total"] + extras


def test_300m_and_350m_are_one_shape_counted_two_ways():
    assert preset_counts("300M", "baseline") == preset_counts("350M", "baseline")
    assert PRESETS["300M"]["dropout"] == 0.05 and "dropout" not in PRESETS["350M"]


def test_1b_16k_uses_gqa_and_long_context():
    cfg = preset_config("1B-16k", "baseline").resolved()
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.max_seq_len) == (16, 4, 16384)


def test_every_preset_is_named_or_tiny():
    assert set(PRESETS) == set(NAMED_COUNT) | {"tiny"}


def test_unknown_size_is_a_clear_error():
    with pytest.raises(ValueError, match="--model_size"):
        preset_config("2B")


def test_param_counter_prints_the_exact_preset_table(capsys):
    from utils.param_counter import main

    assert main(["--presets", "exact"]) == 0
    table = capsys.readouterr().out
    nano = next(line for line in table.splitlines() if line.startswith("| nano |"))
    cells = nano.strip("| ").split(" | ")  # size, shape, name counts, then one cell per variant
    for index, variant in ((3, "baseline"), (9, "ssm_mem")):
        counts = preset_counts("nano", variant)
        assert cells[index] == f"{counts['total']:,} / {counts['non_embedding']:,}", (variant, cells[index])
