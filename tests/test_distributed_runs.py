"""Real multi-process training runs on CPU (gloo): every backend reproduces the single-process run,
FSDP checkpoints reshard 2 -> 1 and 2 -> 3 ranks, two torchrun "nodes" train together, and failures
(bad input, a raising rank, a NaN loss) end the job cleanly. Each run: tiny model, 20 steps."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from tests.dist_helpers import (
    GLOBAL_BATCH,
    PYTHON,
    ROOT,
    child_env,
    free_port,
    launch_command,
    make_dataset,
    metrics,
    run_training,
    train_args,
)
from tests.train_helpers import run_train_in_process

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4  # per-step loss, fp32: summation order differs between 1 and 2 ranks, nothing else


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("dist") / "data")


@pytest.fixture(scope="session")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def reference(data, out):
    """The single-process run every distributed run must reproduce (checkpoint at step 10 for the resumes)."""
    run_training(data, out, "single", 1, "--checkpoint.interval", "10")
    return metrics(out, "single")


@pytest.fixture(scope="session")
def fsdp_run(data, out, reference):
    run_training(data, out, "fsdp2", 2, "--dist.backend", "fsdp", "--checkpoint.interval", "10")
    return metrics(out, "fsdp2")


def assert_same_run(got: list[dict], want: list[dict], first_step: int = 0, tolerance: float = TOLERANCE) -> None:
    assert [r["step"] for r in got] == list(range(first_step, len(want)))
    for g, w in zip(got, want[first_step:]):
        assert g["data_checksum"] == w["data_checksum"], f"step {g['step']}: different data"
        assert g["tokens"] == w["tokens"]
        assert abs(g["loss"] - w["loss"]) < tolerance, f"step {g['step']}: loss {g['loss']} vs {w['loss']}"


def test_fsdp_two_processes_match_single(fsdp_run, reference):
    assert_same_run(fsdp_run, reference)
    assert reference[-1]["loss"] < reference[0]["loss"] - 1.0  # it trained


@pytest.fixture(scope="session")
def zero3_run(data, out, reference):
    run_training(
        data, out, "zero3", 2, "--dist.backend", "deepspeed", "--dist.deepspeed_config", "configs/deepspeed/zero3.json"
    )
    return metrics(out, "zero3")


def test_deepspeed_zero3_two_processes_match_single(out, reference, zero3_run):
    assert_same_run(zero3_run, reference)
    assert (out / "zero3" / "checkpoints" / "step_00000020" / "deepspeed").is_dir()


def test_deepspeed_zero2_preempted_on_one_rank_resumes_and_matches_single(data, out, reference):
    """SIGUSR1 reaches rank 1 only, during step 9: both ranks agree, checkpoint step 10 and exit 0;
    `--checkpoint.resume auto` then finishes the run exactly like the uninterrupted single process."""
    flags = ["--dist.backend", "deepspeed", "--dist.deepspeed_config", "configs/deepspeed/zero2.json"]
    first = _faulty_run(data, out, "zero2", 2, 1, 9, "preempt", "--steps", "20", *flags)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[preempt] signal on 1 rank(s): checkpointed step 10" in first.stderr
    assert [p.name for p in (out / "zero2" / "checkpoints").iterdir()] == ["step_00000010"]
    resumed = run_training(data, out, "zero2", 2, *flags, "--checkpoint.resume", "auto")
    assert "[resume]" in resumed.stderr and "at step 10" in resumed.stderr
    assert_same_run(metrics(out, "zero2"), reference)


def test_ddp_on_two_torchrun_nodes_matches_single(data, out, reference):
    """Two torchrun invocations (--nnodes 2, node_rank 0/1, localhost rendezvous) form one DDP job."""
    port = free_port()
    procs = []
    for node_rank in (0, 1):
        command = [
            PYTHON,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node_rank),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            *train_args(data, out, "ddp_2nodes", "--dist.backend", "ddp"),
        ]
        procs.append(
            subprocess.Popen(
                command, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert_same_run(metrics(out, "ddp_2nodes"), reference)


def test_ddp_accumulation_and_resume_match_single(data, out, reference):
    """Two micro-batches of 3 rows per rank (the first under no_sync) and a resume from the step-10
    checkpoint reproduce the single process's one 12-row micro-batch per step."""
    flags = ["--dist.backend", "ddp", "--data.micro_batch_size", "3"]
    run_training(data, out, "ddp_accum", 2, *flags, "--checkpoint.interval", "10")
    assert_same_run(metrics(out, "ddp_accum"), reference)
    shutil.rmtree(out / "ddp_accum" / "checkpoints" / "step_00000020")  # resuming step 10 would save over it
    checkpoint = out / "ddp_accum" / "checkpoints" / "step_00000010"
    run_training(data, out, "ddp_accum", 2, *flags, "--checkpoint.resume", str(checkpoint))
    assert_same_run(metrics(out, "ddp_accum")[10:], reference, first_step=10)


def test_ddp_with_parameters_unused_on_some_steps_matches_single(data, out):
    """ACT's learned thoughts get no gradient on steps with no-grad iterations (n > 0), and halting can skip
    its thought core on one rank only: DDP must find the unused parameters every step, and leave a
    gradient unused on every rank as None, as one process does (AdamW then skips it)."""
    flags = ["--model.variant", "act", "--model.latent.n_thoughts", "4", "--model.latent.thought_chunk", "4"]
    run_training(data, out, "act_single", 1, *flags)
    run_training(data, out, "act_ddp2", 2, *flags, "--dist.backend", "ddp")
    assert_same_run(metrics(out, "act_ddp2"), metrics(out, "act_single"))


@pytest.mark.parametrize("nproc, option", [(1, "--dist.activation_checkpointing"), (3, "--dist.reshard_core")])
def test_fsdp_checkpoint_from_two_ranks_resumes_on(data, out, reference, fsdp_run, nproc, option):
    """Resharded resume: continues with exactly the uninterrupted run's data and losses. The resumed runs
    also switch on per-block activation checkpointing (1 rank) and per-iteration resharding of the core
    blocks (3 ranks): neither may change the numbers or the checkpoint format."""
    run = f"resume_on_{nproc}"
    shutil.copytree(out / "fsdp2", out / run)
    shutil.rmtree(out / run / "checkpoints" / "step_00000020")  # resuming step 10 would save over it: refused
    checkpoint = out / run / "checkpoints" / "step_00000010"
    assert json.loads((checkpoint / "trainer_state.json").read_text())["world_size"] == 2
    result = run_training(
        data, out, run, nproc, "--dist.backend", "fsdp", option, "true", "--checkpoint.resume", str(checkpoint)
    )
    assert "saved on 2 ranks" in result.stderr
    assert_same_run(metrics(out, run)[10:], reference, first_step=10)


def test_bad_inputs_fail_with_one_clear_error(data, out, reference):
    shape = run_train_in_process(
        train_args(
            data,
            out,
            "shape",
            "--model.d_model",
            "32",
            "--checkpoint.resume",
            str(out / "single" / "checkpoints" / "step_00000010"),
        )[1:]
    )
    assert shape.returncode == 2 and "is from a different model (d_model: checkpoint 64 vs run 32" in shape.stderr
    started = time.time()
    divide = run_training(data, out, "bad_world", 2, "--data.global_batch_size", str(GLOBAL_BATCH + 1), check=False)
    assert divide.returncode != 0 and time.time() - started < 120
    assert f"--data.global_batch_size {GLOBAL_BATCH + 1} is not divisible by the world size 2" in divide.stderr
    ds_config = out / "clip05.json"
    ds_config.write_text(json.dumps({"gradient_clipping": 0.5, "zero_optimization": {"stage": 2}}))
    ds = run_training(
        data, out, "bad_ds", 1, "--dist.backend", "deepspeed", "--dist.deepspeed_config", str(ds_config), check=False
    )
    assert ds.returncode == 2
    assert f"{ds_config}: gradient_clipping = 0.5 contradicts --optim.grad_clip = 1.0" in ds.stderr


def _faulty_run(data, out, run: str, nproc: int, fail_rank: int, fail_step: int, kind: str, *extra: str):
    script = [
        "-m",
        "tests.dist_helpers",
        str(fail_rank),
        str(fail_step),
        kind,
        *train_args(data, out, run, "--steps", "6", *extra)[1:],
    ]  # later flags win
    command = launch_command(nproc, script)
    return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=180)


def test_raising_rank_brings_the_job_down_with_its_traceback(data, out):
    started = time.time()
    result = _faulty_run(data, out, "raise", 2, 1, 2, "raise", "--dist.backend", "fsdp")
    assert result.returncode != 0 and time.time() - started < 120  # no hang until the collective timeout
    assert "[rank 1] failed" in result.stderr and "injected failure at step 2" in result.stderr


def test_nan_loss_on_one_rank_is_skipped_on_all(data, out):
    _faulty_run(data, out, "nan_skip", 2, 1, 3, "nan", "--dist.backend", "ddp").check_returncode()
    records = metrics(out, "nan_skip")
    assert [r["skipped"] for r in records] == [False, False, False, True, False, False]
    assert all(r["loss"] == r["loss"] for i, r in enumerate(records) if i != 3)  # finite after the skip


def test_nan_policy_stop_reports_without_checkpoint(data, out):
    result = _faulty_run(data, out, "nan_stop", 1, 0, 2, "nan", "--dist.nan_policy", "stop")
    assert result.returncode == 2 and "non-finite loss at step 2 (--dist.nan_policy stop)" in result.stderr
    assert json.loads((out / "nan_stop" / "nan_report.json").read_text())["step"] == 2
    assert not (out / "nan_stop" / "checkpoints").exists() or not any((out / "nan_stop" / "checkpoints").iterdir())


def test_export_consolidates_sharded_and_deepspeed_checkpoints(out, reference, fsdp_run, zero3_run, tmp_path):
    """FSDP (DCP, 2 ranks) and ZeRO-3 (partitioned) checkpoints export to the same weights as the
    single-process run, and the exported files load for evaluation on one device."""
    import torch
    from safetensors.torch import load_file

    from recur.eval.load import load_model
    from recur.parallel.export import export_checkpoint

    exported = {run: export_checkpoint(out / run, tmp_path / run) for run in ("single", "fsdp2", "zero3")}
    want = load_file(exported["single"] / "model.safetensors")
    for run in ("fsdp2", "zero3"):
        got = load_file(exported[run] / "model.safetensors")
        assert sorted(got) == sorted(want)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=0, atol=2e-4, msg=f"{run}: {name}")
        model, cfg, meta = load_model(exported[run])
        assert meta.kind == "hf" and cfg.d_model == 64
        torch.testing.assert_close(
            model.state_dict()["core.0.attn.wq.weight"], want["core.0.attn.wq.weight"], rtol=0, atol=2e-4
        )
    with pytest.raises(ValueError, match="already an exported model"):
        export_checkpoint(exported["single"], tmp_path / "again")


@pytest.mark.slow
def test_muon_under_two_process_fsdp_matches_single(data, out):
    """Muon orthogonalises the full matrix even when FSDP shards it: 2 ranks must match 1 process. Newton-Schulz
    amplifies the last-bit differences of a reduce-scatter's summation order (2e-4 after 8 steps here), hence
    the looser tolerance than the other backends'."""
    run_training(data, out, "muon-single", 1, "--optim.name", "muon", "--dist.backend", "fsdp")
    run_training(data, out, "muon-fsdp2", 2, "--optim.name", "muon", "--dist.backend", "fsdp")
    got, want = metrics(out, "muon-fsdp2"), metrics(out, "muon-single")
    assert_same_run(got, want, tolerance=2e-3)
    assert want[-1]["loss"] < want[0]["loss"] - 0.5  # it trained
