"""train.py's command line parsed in-process: list flags, precedence whatever the order, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from recur.cli import build_parser, parse_config


def _parse(*argv: str):
    return parse_config(list(argv))[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["--data.tasks", "parity", "addition"],
        ["--data.tasks=parity", "addition"],
        ["--data.tasks", '["parity", "addition"]'],
        ["--data.tasks", "[parity, addition]"],
    ],
)
def test_list_flags_take_space_separated_values_or_one_list(argv):
    assert _parse(*argv, "--steps", "7").data.tasks == ["parity", "addition"]


def test_list_values_keep_their_element_type_and_null_stays_null():
    cfg = _parse("--eval.depths", "1", "3", "--eval.tasks", "null", "--optim.betas", "0.8", "0.9")
    assert cfg.eval.depths == [1, 3] and cfg.eval.tasks is None and cfg.optim.betas == (0.8, 0.9)


@pytest.mark.parametrize("before", [True, False])
def test_a_flag_beats_the_config_file_before_or_after_it(tmp_path: Path, before: bool):
    config = tmp_path / "run.yaml"
    config.write_text("steps: 77\ndata:\n  tasks: [copy]\n")
    flags = ["--steps", "12"]
    cfg = _parse(*(flags + ["--config", str(config)] if before else ["--config", str(config)] + flags))
    assert cfg.steps == 12 and cfg.data.tasks == ["copy"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--stpes", "30"], "unknown flag --stpes; did you mean --steps?"),
        (["--data.taks", "copy"], "unknown flag --data.taks; did you mean --data.tasks?"),
        (["--steps", "abc"], "--steps: expected int, got 'abc'"),
        (["--stop_at", "x"], "--stop_at: expected int | None, got 'x'"),
        (["--eval.depths", "1", "a"], "--eval.depths: expected list[int], got 'a'"),
        (["--steps"], "--steps: expected one argument"),
        (["--config", "/does/not/exist.yaml"], "--config: File does not exist: '/does/not/exist.yaml'"),
    ],
)
def test_a_rejected_command_line_is_one_message_naming_the_flag(argv, message):
    with pytest.raises(ValueError) as error:
        _parse(*argv)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "text, message",
    [
        ("stpes: 3\n", "unknown option stpes (from a --config file); did you mean steps?"),
        ("data:\n  taks: [copy]\n", "unknown option data.taks (from a --config file); did you mean data.tasks?"),
        ("steps: abc\n", "--steps: expected int, got 'abc'"),
    ],
)
def test_a_bad_config_file_is_one_message_naming_the_key(tmp_path: Path, text: str, message: str):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ValueError) as error:
        _parse("--config", str(config))
    assert str(error.value) == message


@pytest.mark.parametrize("steps, warmup", [(5, 0), (100, 10), (300, 30), (5000, 30)])
def test_the_default_warmup_shrinks_with_short_runs(steps, warmup):
    assert _parse("--steps", str(steps)).optim.schedule.warmup_steps == warmup


def test_an_explicit_warmup_is_kept(tmp_path: Path):
    config = tmp_path / "run.yaml"
    config.write_text("optim:\n  schedule:\n    warmup_steps: 3\n")
    assert _parse("--steps", "5", "--optim.schedule.warmup_steps", "4").optim.schedule.warmup_steps == 4
    assert _parse("--steps", "5", "--config", str(config)).optim.schedule.warmup_steps == 3


def test_help_shows_field_comments_choices_and_the_default_preset():
    text = " ".join(build_parser().format_help().split())
    assert "steps between progress lines (metrics.jsonl gets every step)" in text  # a field comment
    assert "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16" in text  # choices listed in the comment
    assert "one of baseline, recurrent, shared_loop, latent, act, ssm, ssm_mem" in text  # choices from code
    assert "the --model_size preset fills the default (shown: tiny) (type: int, default: 128)" in text  # d_model
    assert "when not given: min(30, --steps // 10)" in text
