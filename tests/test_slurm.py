"""Real slurm: shells/launch.sh on a single-host cluster, preempted mid-run, requeued and resumed, must end
with exactly the weights of an uninterrupted run of the same job.

Needs root and apt-get (or slurm-wlm + munge already installed): scripts/slurm_local.sh installs and starts
munged, slurmctld and slurmd. CI runs as root on Debian, so this runs there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
SLURM_LOCAL = ROOT / "scripts" / "slurm_local.sh"
NTASKS = 2  # ranks of the job (gloo on CPU); both runs use the same launcher, so the sums match bit for bit
STEPS = 40
TRAIN_ARGS = [
    "--model.d_model",
    "64",
    "--steps",
    str(STEPS),
    "--data.num_docs",
    "200",
    "--data.seq_len",
    "64",
    "--data.global_batch_size",
    "4",
    "--checkpoint.interval",
    "5",
    "--log.interval",
    "5",
    "--optim.schedule.warmup_steps",
    "5",
    "--recurrence.mean_recurrence",
    "2",
    "--recurrence.backprop_depth",
    "2",
    "--eval.num_samples",
    "2",
    "--eval.depths",
    "[1]",
    "--eval.max_new_tokens",
    "4",
]
TIMEOUT_S = 420  # a hang guard; the test takes ~1-3 min (2 cores, more when the machine is shared)


def _missing_requirement() -> str | None:
    if os.geteuid() != 0:
        return "needs root: the local slurm cluster's daemons run as root"
    installed = all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not installed and shutil.which("apt-get") is None:
        return "slurm-wlm/munge are not installed and apt-get is not available to install them"
    return None


@pytest.fixture(scope="module")
def slurm_env() -> dict[str, str]:
    reason = _missing_requirement()
    if reason:
        pytest.skip(reason)
    was_running = subprocess.run([str(SLURM_LOCAL), "status"], capture_output=True).returncode == 0
    started = subprocess.run([str(SLURM_LOCAL), "start"], capture_output=True, text=True, timeout=600)
    assert started.returncode == 0, f"scripts/slurm_local.sh start failed:\n{started.stderr}"
    conf = re.search(r"export SLURM_CONF=(\S+)", started.stdout).group(1)
    # A test run inside an allocation (or a torchrun) must not hand its own job's variables to the jobs it
    # submits: RANK/WORLD_SIZE would win over srun's topology, a fixed MASTER_PORT would join the two jobs.
    launcher = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in launcher}
    env.update(SLURM_CONF=conf, PYTHON=sys.executable, RECUR_ROOT=str(ROOT))
    yield env
    # Jobs left by a failed test would outlive the daemons and break the next run's cluster.
    subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
    if not was_running:
        subprocess.run([str(SLURM_LOCAL), "stop"], capture_output=True, timeout=60)


def _slurm(env: dict, *args: str) -> str:
    result = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{' '.join(args)} failed: {result.stderr}"
    return result.stdout


def _submit(env: dict, out_dir: Path, run_name: str, log: Path) -> str:
    return (
        _slurm(
            env,
            "sbatch",
            "--parsable",
            f"--job-name={run_name}",
            "--gpus-per-node=0",
            f"--ntasks-per-node={NTASKS}",
            "--cpus-per-task=1",
            "--time=10",
            f"--output={log}",
            f"--error={log}",
            str(ROOT / "shells" / "launch.sh"),
            *TRAIN_ARGS,
            "--out_dir",
            str(out_dir),
            "--run_name",
            run_name,
        )
        .strip()
        .split(";")[0]
    )


def _job(env: dict, job_id: str) -> dict[str, str]:
    text = _slurm(env, "scontrol", "show", "job", job_id)
    return dict(re.findall(r"(\w+)=(\S*)", text))


def _wait_for(what: str, condition, logs: list[Path], deadline: float):
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p}\n{p.read_text()[-3000:] if p.exists() else '(missing)'}" for p in logs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


def _tensors(checkpoint: Path, scratch: Path) -> dict[str, object]:
    """Every entry of a DCP checkpoint (model and optimizer), consolidated and flattened to dotted keys."""
    target = scratch / f"{checkpoint.parent.parent.name}.pt"
    dcp_to_torch_save(str(checkpoint), str(target))
    flat: dict[str, object] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            flat[prefix] = value

    walk("", torch.load(target, weights_only=False))
    return flat


def _losses(run_dir: Path) -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def test_preempted_job_requeues_resumes_and_matches_uninterrupted_run(slurm_env, tmp_path):
    out_dir = tmp_path / "runs"
    logs = {name: tmp_path / f"{name}.log" for name in ("preempted", "reference")}
    deadline = time.monotonic() + TIMEOUT_S
    # The cluster lets two jobs share the CPUs: the reference runs beside the job that is preempted.
    job = _submit(slurm_env, out_dir, "preempted", logs["preempted"])
    reference = _submit(slurm_env, out_dir, "reference", logs["reference"])

    metrics = out_dir / "preempted" / "metrics.jsonl"
    _wait_for(
        "the job to log 3 steps",
        lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3,
        list(logs.values()),
        deadline,
    )
    _slurm(slurm_env, "scancel", "--signal=USR1", "--batch", job)
    # A requeued job is held for ~2 minutes before it is eligible again; release it sooner, but not within
    # the second its old instance ended: slurmctld then still sees the old launch credential as revoked
    # and fails the job ("Killing non-startable batch job: Job credential revoked").
    _wait_for(
        "the job to be requeued", lambda: _job(slurm_env, job).get("Restarts") == "1", list(logs.values()), deadline
    )
    time.sleep(3)
    _slurm(slurm_env, "scontrol", "update", f"JobId={job}", "StartTime=now")

    def finished() -> bool:
        states = {j: _job(slurm_env, j)["JobState"] for j in (job, reference)}
        failed = {
            j: s for j, s in states.items() if s in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
        }
        assert not failed, f"jobs {failed}:\n" + "\n".join(p.read_text()[-3000:] for p in logs.values())
        return all(s == "COMPLETED" for s in states.values())

    _wait_for("both jobs to complete", finished, list(logs.values()), deadline)

    log = logs["preempted"].read_text()
    assert f"[launch] job {job} start (restart 0)" in log and f"[launch] job {job} start (restart 1)" in log, log
    preempted_at = int(re.search(r"\[preempt\].*checkpointed step (\d+)", log).group(1))
    assert preempted_at < STEPS, f"the run finished (step {preempted_at}) before the preemption signal"
    resumed = re.search(r"\[resume\] (\S+) at step (\d+)", log)
    assert resumed and int(resumed.group(2)) == preempted_at, log
    assert "requeueing job" in log
    assert _job(slurm_env, job)["ExitCode"] == "0:0"

    # Same losses on every step (the resumed half saw exactly the uninterrupted run's data) ...
    assert _losses(out_dir / "preempted") == _losses(out_dir / "reference")
    # ... and bit-identical final weights and optimizer state.
    final = f"checkpoints/step_{STEPS:08d}"
    got = _tensors(out_dir / "preempted" / final, tmp_path)
    want = _tensors(out_dir / "reference" / final, tmp_path)
    assert sorted(got) == sorted(want)
    assert any(key.startswith("model.") for key in got)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), f"{key} differs after preemption + resume"
        else:
            assert got[key] == value, key
