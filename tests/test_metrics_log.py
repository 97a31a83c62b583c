"""metrics.jsonl survives a crash mid-write: a torn last line is dropped on resume (with a note); a corrupt
line elsewhere is one error naming the file."""

import json

import pytest

from recur.metrics import MetricsLogger, read_metrics


def _write(path, text: str) -> None:
    path.write_text(text)


def _logger(run_dir) -> MetricsLogger:
    return MetricsLogger(
        run_dir,
        total_steps=10,
        log_interval=1,
        wandb_mode="disabled",
        wandb_project="p",
        run_name="r",
        config={},
        resume=True,
    )


def test_torn_last_line_is_dropped_on_resume_with_a_note(tmp_path, capsys):
    lines = [json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(8)]
    _write(tmp_path / "metrics.jsonl", "\n".join(lines) + '\n{"step": 8, "loss": 0.1')  # power loss mid-line
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(8))
    _logger(tmp_path).truncate_after(5)
    assert "dropped a torn last line" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(5))
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")


def test_corrupt_line_inside_the_log_names_the_file(tmp_path):
    _write(tmp_path / "metrics.jsonl", '{"step": 0, "loss": 1}\n{"step": 1, "lo\n{"step": 2, "loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        _logger(tmp_path).truncate_after(2)
    with pytest.raises(ValueError, match=r"metrics.jsonl: line 2"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_mfu_is_shown_against_the_spec_sheet_and_the_measured_matmul_rate():
    import torch

    from recur.metrics import measured_matmul_tflops, mfu_text

    assert measured_matmul_tflops(torch.device("cpu"), torch.float32, size=128, iters=2) > 0
    assert mfu_text({"mfu": 0.356, "mfu_measured": 0.48}) == " mfu 35.6% (48% of measured)"
    assert mfu_text({"mfu": None, "mfu_measured": 0.5}) == " mfu 50.0% of measured"  # a CPU: no spec sheet
    assert mfu_text({"mfu": None, "mfu_measured": None}) == ""
