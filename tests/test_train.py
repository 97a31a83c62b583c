"""End-to-end trainer tests: exact resume after a clean preemption and after SIGKILL, and bad configs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch
from train_helpers import REPO, final_state, losses, run_train, run_train_in_process, tiny_args, train_cmd, tree_digest

from recur.checkpoint import Checkpointer, DCPState
from recur.data.packing import pack_dataset
from recur.data.validate import read_manifest


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "copy"
    pack_dataset(
        out, tokenizer="byte", seq_len=48, tasks=["copy"], num_docs=600, seed=0, packing="bfd", mask_non_assistant=True
    )
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "straight"
    result = run_train(tiny_args(run_dir, data_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def _wait_for_steps(run_dir, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)


def _assert_same_run(run_dir, reference, tmp_path) -> None:
    assert losses(run_dir) == losses(reference)  # bit-identical floats, every step
    got, want = final_state(run_dir, tmp_path), final_state(reference, tmp_path)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)


def _popen(args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        train_cmd(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


def test_loss_falls(reference):
    values = [loss for _, loss in losses(reference)]
    assert len(values) == 40 and sum(values[-5:]) / 5 < 0.8 * sum(values[:5]) / 5


def test_preempt_and_resume_is_bit_identical(tmp_path, data_dir, reference):
    run_dir = tmp_path / "preempted"
    proc = _popen(tiny_args(run_dir, data_dir))
    _wait_for_steps(run_dir, 18, proc)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "[preempt]" in err
    stopped_at = max(step for step, _ in losses(run_dir))
    assert stopped_at < 39
    result = run_train(tiny_args(run_dir, data_dir, **{"--checkpoint.resume": "auto"}))
    assert result.returncode == 0, result.stderr
    assert "[resume]" in result.stderr
    _assert_same_run(run_dir, reference, tmp_path)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_auto_is_bit_identical(tmp_path, data_dir, reference):
    run_dir = tmp_path / "killed"
    rng = random.Random(1234)
    args = tiny_args(run_dir, data_dir, **{"--checkpoint.resume": "auto"})
    kills = 0
    while True:
        proc = _popen(args)
        if kills < 3:
            done = len(losses(run_dir)) if (run_dir / "metrics.jsonl").exists() else 0
            _wait_for_steps(run_dir, done + rng.randint(3, 9), proc)
            time.sleep(rng.random() * 0.5)  # land anywhere, including inside a checkpoint write
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills += 1
                continue
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        break
    assert kills == 3
    _assert_same_run(run_dir, reference, tmp_path)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--model_size", "huge"], "--model_size: unknown size 'huge'"),
        (["--variant", "nope"], "unknown variant 'nope'"),
        (
            ["--model.n_prelude", "1", "--model.n_core", "1", "--model.n_coda", "1", "--model.n_layers", "4"],
            "does not match --model.n_layers 4",
        ),
        (
            ["--recurrence.sampling", "fixed", "--recurrence.mean_recurrence", "2", "--recurrence.backprop_depth", "4"],
            "exceeds the fixed recurrence",
        ),
        (["--data.path", "/does/not/exist"], "data directory /does/not/exist does not exist"),
        (["--checkpoint.resume", "/does/not/exist"], "checkpoint /does/not/exist does not exist"),
        (["--data.tasks", "[juggling]"], "unknown task 'juggling'"),
        (["--data.tasks", "copy", "juggling"], "unknown task 'juggling'"),
        (["--stpes", "30"], "unknown flag --stpes; did you mean --steps?"),
        (["--steps", "abc"], "--steps: expected int, got 'abc'"),
        (["--config", "/does/not/exist.yaml"], "--config: File does not exist: '/does/not/exist.yaml'"),
        (
            ["--steps", "5", "--optim.schedule.warmup_steps", "10"],
            "--optim.schedule.warmup_steps 10 must be below the run length (5 steps)",
        ),
        (["--steps", "5", "--optim.schedule.warmup_steps", "5"], "--optim.schedule.warmup_steps 5 must be below"),
        (
            [
                "--steps",
                "10",
                "--optim.schedule.warmup_steps",
                "5",
                "--optim.schedule.name",
                "wsd",
                "--optim.schedule.decay_fraction",
                "0.6",
            ],
            "--optim.schedule.warmup_steps 5 + decay steps (6) exceed",
        ),
        (["--data.micro_batch_size", "5"], "--data.micro_batch_size 5 must divide the per-rank batch"),
        (
            ["--model.variant", "latent", "--model.latent.n_thougts", "3"],
            "unknown flag --model.latent.n_thougts; did you mean --model.latent.n_thoughts?",
        ),
        (
            ["--model.latent.n_thoughts", "3"],
            "--model.latent.n_thoughts: variant 'recurrent' does not read --model.latent",
        ),
        (["--variant", "act", "--model.act.threshold", "1.5"], "--model.act.threshold must be in [0, 1], got 1.5"),
        (["--log.interval", "0"], "--log.interval must be >= 1, got 0"),
        (["--data.shuffle_window", "0"], "--data.shuffle_window must be >= 1, got 0"),
        (["--data.seed", "-1"], "--data.seed must be >= 0, got -1"),
        (["--data.num_workers", "-1"], "--data.num_workers must be >= 0, got -1"),
    ],
)
def test_bad_config_one_line_error_and_nothing_written(tmp_path, flags, message):
    """train.py's main() in-process (each refusal costs milliseconds, not an interpreter start);
    test_bad_config_from_the_command_line runs the real command."""
    _assert_refused_and_nothing_written(tmp_path, flags, message, run_train_in_process)


def test_bad_config_from_the_command_line(tmp_path):
    """The real `python train.py ...`: a refused command line exits 2 with the one-line error."""
    _assert_refused_and_nothing_written(
        tmp_path,
        ["--stpes", "30"],
        "unknown flag --stpes; did you mean --steps?",
        lambda args: run_train(args, timeout=120),
    )
    _assert_refused_and_nothing_written(
        tmp_path,
        ["--data.path", "/does/not/exist"],
        "data directory /does/not/exist does not exist",
        lambda args: run_train(args, timeout=120),
    )


def _assert_refused_and_nothing_written(tmp_path, flags, message, runner) -> None:
    run_dir = tmp_path / "runs" / "bad"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("keep me\n")
    result = runner(["--out_dir", str(tmp_path / "runs"), "--run_name", "bad", *flags])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if "Warning" not in line and line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0], result.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    assert (run_dir / "config.yaml").read_text() == "keep me\n"


@pytest.mark.parametrize("show_depth", [True, False])
def test_progress_line_shows_the_depth_only_for_models_that_use_it(tmp_path, capsys, show_depth):
    from recur.metrics import MetricsLogger

    logger = MetricsLogger(
        tmp_path,
        total_steps=1,
        log_interval=1,
        wandb_mode="disabled",
        wandb_project="p",
        run_name="r",
        config={},
        show_depth=show_depth,
    )
    logger.progress(
        {
            "step": 0,
            "loss": 1.0,
            "lr": 1e-3,
            "r": 3,
            "mean_recurrence": 4,
            "k": 2,
            "tokens_per_s": 10.0,
            "grad_norm": 1.0,
        },
        first_step=0,
    )
    line = capsys.readouterr().err
    assert line.startswith("step      1/1 | loss 1.0000") and "tok/s" in line
    assert ("r̄ 4, k 2" in line) == show_depth


def test_skip_policy_stops_a_diverged_run_instead_of_finishing_on_it(tmp_path, data_dir):
    """lr 1e6: every step is non-finite; `skip` used to skip them all and exit 0 with `final loss nan`."""
    run_dir = tmp_path / "diverged"
    result = run_train_in_process(
        tiny_args(
            run_dir,
            data_dir,
            steps=12,
            **{"--optim.schedule.lr": "1e6", "--optim.schedule.warmup_steps": "1", "--dist.max_skipped_steps": "3"},
        )
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "3 in a row = --dist.max_skipped_steps" in last and last.startswith("train.py: error:")
    report = json.loads((run_dir / "nan_report.json").read_text())
    assert report["policy"].startswith("skip") and not (run_dir / "summary.json").exists()


def test_resume_with_other_settings_is_refused_before_anything_is_written(tmp_path, data_dir):
    """A 20-step run stopped at 10, resumed with --steps 5 (would relabel step 10 as step 5) or another lr."""
    run_dir = tmp_path / "mixed"
    first = run_train(tiny_args(run_dir, data_dir, steps=20, **{"--stop_at": "10"}))
    assert first.returncode == 0, first.stderr
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    config = (run_dir / "config.yaml").read_text()
    shorter = run_train_in_process(
        tiny_args(run_dir, data_dir, steps=5, **{"--checkpoint.resume": "auto", "--optim.schedule.warmup_steps": "4"})
    )
    assert shorter.returncode == 2 and "is at step 10, past --steps 5" in shorter.stderr, shorter.stderr
    other_lr = run_train_in_process(
        tiny_args(run_dir, data_dir, steps=20, **{"--checkpoint.resume": "auto", "--optim.schedule.lr": "1e-3"})
    )
    assert other_lr.returncode == 2 and "--optim.schedule" in other_lr.stderr, other_lr.stderr
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert (run_dir / "config.yaml").read_text() == config
    same = run_train(tiny_args(run_dir, data_dir, steps=20, **{"--checkpoint.resume": "auto"}))
    assert same.returncode == 0 and "[resume]" in same.stderr, same.stderr


def test_a_run_recorded_before_a_knob_existed_still_resumes(tmp_path, data_dir):
    """A config.yaml written before a field was added lacks it; the field's default is what that run trained
    with, so the resume check fills it in instead of refusing (a changed value is still refused)."""
    from dataclasses import asdict

    import yaml

    from recur.cli import parse_config
    from recur.run_dir import RunDir
    from recur.train_setup import check_resumable

    cfg, _ = parse_config(tiny_args(tmp_path / "old", data_dir, steps=20))
    recorded = json.loads(json.dumps(asdict(cfg)))
    del recorded["recurrence"]["single_pass_fraction"]
    run = RunDir(tmp_path / "old")
    run.root.mkdir()
    run.config.write_text(yaml.safe_dump(recorded))
    check_resumable(cfg, run, run.checkpoints / "step_00000005", 5)
    cfg.recurrence.single_pass_fraction = 0.5
    with pytest.raises(ValueError, match="--recurrence"):
        check_resumable(cfg, run, run.checkpoints / "step_00000005", 5)


def _error_line(result: subprocess.CompletedProcess) -> str:
    """The one line a refused command prints (exit 2)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), result.stderr
    return lines[0]


def test_a_new_run_under_an_existing_run_name_is_refused_before_anything_is_written(tmp_path, data_dir):
    """It used to train again beside the old checkpoints and append to the old eval.jsonl (issue 15, case 2)."""
    run_dir = tmp_path / "taken"
    first = run_train_in_process(tiny_args(run_dir, data_dir, steps=3, **{"--optim.schedule.warmup_steps": "1"}))
    assert first.returncode == 0, first.stderr
    before = tree_digest(run_dir)
    again = _error_line(
        run_train_in_process(tiny_args(run_dir, data_dir, steps=3, **{"--optim.schedule.warmup_steps": "1"}))
    )
    assert "--run_name taken" in again and "already holds a run" in again and "--checkpoint.resume auto" in again
    assert tree_digest(run_dir) == before


def test_a_finished_run_is_never_rewritten(tmp_path, data_dir):
    """A resume of a finished run writes nothing (it used to save its final checkpoint again, evaluate again and
    rewrite config.yaml); resuming an older checkpoint while newer ones exist is refused (it would save over them)."""
    run_dir = tmp_path / "finished"
    first = run_train_in_process(tiny_args(run_dir, data_dir, steps=10))
    assert first.returncode == 0, first.stderr
    final = run_dir / "checkpoints" / "step_00000010"
    before, inode = tree_digest(run_dir), final.stat().st_ino
    again = run_train_in_process(tiny_args(run_dir, data_dir, steps=10, **{"--checkpoint.resume": "auto"}))
    assert again.returncode == 0, again.stderr
    assert f"[done] {run_dir} is already complete at step 10" in again.stderr
    older = _error_line(
        run_train_in_process(
            tiny_args(
                run_dir, data_dir, steps=10, **{"--checkpoint.resume": str(run_dir / "checkpoints" / "step_00000005")}
            )
        )
    )
    assert "holds newer checkpoints (step_00000010)" in older
    assert tree_digest(run_dir) == before and final.stat().st_ino == inode


def test_a_complete_checkpoint_is_never_overwritten(tmp_path):
    model = torch.nn.Linear(2, 2)
    state = DCPState(model, torch.optim.SGD(model.parameters(), lr=0.1))
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    saved = checkpointer.save(5, state, {"step": 5})
    before = tree_digest(saved)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(ValueError, match="step_00000005 already exists and is complete; refusing to overwrite it"):
        checkpointer.save(5, state, {"step": 5})
    assert tree_digest(saved) == before


def _generated(run_dir, seq_len: int, **extra: str) -> list[str]:
    """A 3-step tiny run on successor problems that train.py generates into the run."""
    return tiny_args(
        run_dir,
        None,
        steps=3,
        **{
            "--data.tasks": "[successor]",
            "--data.num_docs": "200",
            "--data.seq_len": str(seq_len),
            "--eval.tasks": "[successor]",
            "--optim.schedule.warmup_steps": "1",
            **extra,
        },
    )


def test_generated_data_of_other_settings_is_regenerated(tmp_path):
    """A restart (no checkpoint to resume) with another --data.seq_len used to train on the old run's data while
    its config.yaml said otherwise."""
    run_dir = tmp_path / "gen"
    first = run_train_in_process(
        _generated(run_dir, 48, **{"--checkpoint.interval": "0", "--checkpoint.save_final": "false"})
    )
    assert first.returncode == 0, first.stderr
    second = run_train_in_process(_generated(run_dir, 32, **{"--checkpoint.resume": "auto"}))
    assert second.returncode == 0, second.stderr
    assert (
        f"[data] {run_dir / 'data' / 'train'} was generated with other settings (--data.seq_len 48 -> 32); regenerating"
    ) in second.stderr
    assert [read_manifest(run_dir / "data" / split)["seq_len"] for split in ("train", "val")] == [32, 32]


def test_resume_with_other_generation_settings_keeps_the_data(tmp_path):
    """The checkpoint trained on the generated data: a resume with another --data.seq_len is refused, and
    the data is not regenerated under it."""
    run_dir = tmp_path / "gen"
    first = run_train_in_process(_generated(run_dir, 48, **{"--steps": "6", "--stop_at": "3"}))
    assert first.returncode == 0, first.stderr
    before = tree_digest(run_dir)
    refused = _error_line(
        run_train_in_process(_generated(run_dir, 32, **{"--steps": "6", "--checkpoint.resume": "auto"}))
    )
    assert "--data.seq_len 48 -> 32" in refused
    assert tree_digest(run_dir) == before


def test_generated_data_under_a_checkpoint_is_never_replaced(tmp_path):
    """Without config.yaml to compare (train() called in-process), the recorded recipe still refuses a resume."""
    from recur.data.generated import generate_once

    out = tmp_path / "train"
    recipe = {"--data.seq_len": 48}
    generate_once(
        out,
        recipe,
        lambda: pack_dataset(out, tokenizer="byte", seq_len=48, tasks=["successor"], num_docs=20, recipe=recipe),
        resuming=False,
    )
    before = tree_digest(out)
    with pytest.raises(ValueError, match=r"train was generated with other settings \(--data.seq_len 48 -> 32\)"):
        generate_once(out, {"--data.seq_len": 32}, lambda: pytest.fail("regenerated"), resuming=True)
    assert tree_digest(out) == before
