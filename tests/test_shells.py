"""The slurm scripts without slurm: syntax, the launcher's topology and command lines (DRY_RUN=1 with fake
SLURM_* variables), the first-host parser, and the job chains the experiment scripts submit (a fake sbatch).
The real cluster run is tests/test_slurm.py."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "shells").glob("*.sh")) + [ROOT / "scripts" / "slurm_local.sh"]


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    """A clean environment: no outer slurm job, an empty machine config, and a `scontrol` that fails (so the
    launcher's own hostlist parser is what picks the master)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "scontrol"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    config = tmp_path / "machine_config.sh"
    config.write_text("")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "OMP_", "NPROC"))}
    clean.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        RECUR_MACHINE_CONFIG=str(config),
        PYTHON=sys.executable,
        RECUR_ROOT=str(ROOT),
    )
    return clean


def _run(script: str, env: dict, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "shells" / script), *args], env={**env, **extra}, capture_output=True, text=True, timeout=60
    )


def _dry_launch(env: dict, *args: str, **slurm: str) -> tuple[dict[str, str], list[str]]:
    """(exported variables, command) that launch.sh would run."""
    job = {
        "SLURM_JOB_ID": "123456",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_CPUS_PER_TASK": "6",
        **slurm,
    }
    result = _run("launch.sh", env, *args, DRY_RUN="1", **job)
    assert result.returncode == 0, result.stderr
    variables, command = result.stdout.strip().splitlines()
    return dict(item.split("=", 1) for item in variables.split()), shlex.split(command)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("gpu[07-09,12],cpu1", "gpu07"),
        ("node5", "node5"),
        ("a,b[1-2]", "a"),
        ("r[1-2]n[03-04]", "r1n03"),
        ("c[100-101]", "c100"),
        ("x-y[5]", "x-y5"),
    ],
)
def test_master_is_first_host_of_nodelist(env, nodelist, first):
    variables, _ = _dry_launch(env, SLURM_JOB_NODELIST=nodelist)
    assert variables["MASTER_ADDR"] == first
    if shutil.which("scontrol", path=os.environ["PATH"]):  # the real one, where slurm is installed
        real = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True)
        if real.returncode == 0:
            assert real.stdout.split()[0] == first


def test_srun_mode_one_task_per_gpu(env):
    variables, cmd = _dry_launch(env, "--config", "configs/x.yaml", "--steps", "7")
    assert variables == {"MASTER_ADDR": "gpu07", "MASTER_PORT": str(15000 + 123456 % 10000), "OMP_NUM_THREADS": "6"}
    assert cmd[0] == "srun" and "--kill-on-bad-exit=1" in cmd
    assert {"--nodes=2", "--ntasks=16", "--ntasks-per-node=8", "--cpus-per-task=6"} <= set(cmd)
    assert cmd[cmd.index(sys.executable) :] == [
        sys.executable,
        "train.py",
        "--checkpoint.resume",
        "auto",
        "--config",
        "configs/x.yaml",
        "--steps",
        "7",
    ]


def test_cpu_mode_uses_tasks_per_node(env):
    _, cmd = _dry_launch(
        env,
        SLURM_NNODES="1",
        SLURM_JOB_NODELIST="vm",
        SLURM_GPUS_ON_NODE="",
        SLURM_GPUS_PER_NODE="0",
        SLURM_NTASKS_PER_NODE="2(x3)",
        SLURM_CPUS_PER_TASK="1",
    )
    assert {"--nodes=1", "--ntasks=2", "--ntasks-per-node=2"} <= set(cmd)


def test_torchrun_mode_one_agent_per_node(env):
    variables, cmd = _dry_launch(env, "--steps", "3", LAUNCH_MODE="torchrun", SLURM_GPUS_ON_NODE="4")
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1"} <= set(cmd)
    run = cmd[cmd.index("torch.distributed.run") + 1 :]
    assert {
        "--nnodes=2",
        "--nproc-per-node=4",
        "--rdzv-backend=c10d",
        "--rdzv-id=123456",
        f"--rdzv-endpoint=gpu07:{variables['MASTER_PORT']}",
    } <= set(run)
    signals = next(a for a in run if a.startswith("--signals-to-handle="))
    assert "SIGUSR1" in signals.split("=")[1].split(",")  # torchrun must forward the preemption signal
    assert run[run.index("train.py") :] == ["train.py", "--checkpoint.resume", "auto", "--steps", "3"]


def test_requeued_start_always_resumes(env):
    _, first = _dry_launch(env, "--checkpoint.resume", "none")
    _, again = _dry_launch(env, "--checkpoint.resume", "none", SLURM_RESTART_COUNT="1")
    assert first[-4:] == ["--checkpoint.resume", "auto", "--checkpoint.resume", "none"]  # the caller's flag wins
    assert again[-4:] == ["--checkpoint.resume", "none", "--checkpoint.resume", "auto"]  # a restart resumes


def test_launcher_bad_input(env):
    outside = _run("launch.sh", env, DRY_RUN="1")
    assert outside.returncode == 2 and "SLURM_JOB_ID is not set" in outside.stderr
    mode = _run(
        "launch.sh", env, DRY_RUN="1", LAUNCH_MODE="mpi", SLURM_JOB_ID="1", SLURM_NNODES="1", SLURM_JOB_NODELIST="vm"
    )
    assert mode.returncode == 2 and "LAUNCH_MODE=mpi" in mode.stderr
    missing = _run("launch.sh", env, DRY_RUN="1", RECUR_MACHINE_CONFIG="/nonexistent/machine_config.sh")
    assert missing.returncode == 2 and "/nonexistent/machine_config.sh" in missing.stderr


def test_machine_config_is_sourced(env, tmp_path):
    config = tmp_path / "cluster.sh"
    config.write_text(f"PYTHON={shlex.quote(sys.executable)}-from-config\nexport MASTER_PORT=29999\n")
    bad = _run("launch.sh", env, DRY_RUN="1", RECUR_MACHINE_CONFIG=str(config), PYTHON="")
    assert bad.returncode == 2 and "-from-config' not found" in bad.stderr
    config.write_text("export MASTER_PORT=29999\n")
    variables, _ = _dry_launch({**env, "RECUR_MACHINE_CONFIG": str(config)})
    assert variables["MASTER_PORT"] == "29999"


@pytest.mark.parametrize(
    "nproc,expected",
    [
        ("1", [sys.executable, "train.py", "--checkpoint.resume", "auto", "--steps", "5"]),
        (
            "3",
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nproc-per-node=3",
                "train.py",
                "--checkpoint.resume",
                "auto",
                "--steps",
                "5",
            ],
        ),
    ],
)
def test_local_launcher(env, nproc, expected):
    result = _run("local.sh", env, "--steps", "5", DRY_RUN="1", NPROC=nproc)
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == expected


def test_local_launcher_rejects_bad_nproc(env):
    result = _run("local.sh", env, DRY_RUN="1", NPROC="two")
    assert result.returncode == 2 and "NPROC=two" in result.stderr


@pytest.fixture
def fake_sbatch(env, tmp_path):
    """An sbatch that records its arguments (one line of shell words per call) and prints job ids 1001, 1002..."""
    calls = tmp_path / "sbatch_calls"
    script = Path(env["PATH"].split(":")[0]) / "sbatch"
    script.write_text(
        f'#!/bin/bash\nprintf "%q " "$@" >> {calls}\necho >> {calls}\necho "$((1000 + $(wc -l < {calls})));cluster"\n'
    )
    script.chmod(0o755)
    env["RECUR_OUT_ROOT"] = str(tmp_path / "out")
    return lambda: [shlex.split(line) for line in calls.read_text().splitlines()]


def test_nano_ladder_chains_train_eval_compare(env, fake_sbatch, tmp_path):
    result = _run("nano_ladder.sh", env, "50M", "--steps", "100", VARIANTS="baseline latent")
    assert result.returncode == 0, result.stderr
    calls = fake_sbatch()
    train_b, eval_b, train_l, eval_l, compare = calls
    out = tmp_path / "out" / "ladder"
    assert train_b[train_b.index("shells/launch.sh") :] == [
        "shells/launch.sh",
        "--config",
        "configs/ladder/baseline.yaml",
        "--model_size",
        "50M",
        "--out_dir",
        str(out),
        "--run_name",
        "50M_baseline",
        "--steps",
        "100",
    ]
    assert "--dependency=afterok:1001" in eval_b and eval_b[-3:] == [str(out / "50M_baseline"), "--suite", "all"]
    assert "--dependency=afterok:1003" in eval_l and "configs/ladder/latent.yaml" in train_l
    assert "--dependency=afterok:1002:1004" in compare
    assert compare[-3:] == [str(out / "compare_50M"), str(out / "50M_baseline"), str(out / "50M_latent")]


def test_nano_ladder_rejects_unknown_variant(env, fake_sbatch):
    result = _run("nano_ladder.sh", env, VARIANTS="baseline nope")
    assert result.returncode == 2 and "configs/ladder/nope.yaml does not exist" in result.stderr
    assert not (Path(env["PATH"].split(":")[0]).parent / "sbatch_calls").exists()  # nothing was submitted


def test_1b_16k_submits_the_launcher(env, fake_sbatch, tmp_path):
    result = _run("1b_16k.sh", env, "--data.path", "/data/x", NODES="8")
    assert result.returncode == 0, result.stderr
    (call,) = fake_sbatch()
    assert {"--job-name=1b_16k", "--nodes=8", "--time=48:00:00"} <= set(call)
    assert call[call.index("shells/launch.sh") :] == [
        "shells/launch.sh",
        "--config",
        "configs/1b_16k.yaml",
        "--out_dir",
        str(tmp_path / "out"),
        "--run_name",
        "1b_16k",
        "--data.path",
        "/data/x",
    ]


def test_retrofit_converts_once_then_trains(env, fake_sbatch, tmp_path):
    model = tmp_path / "TinyLlama"
    model.mkdir()
    (model / "config.json").write_text("{}")
    python_calls = tmp_path / "python_calls"
    fake_python = tmp_path / "bin" / "python-fake"  # writes what utils/convert_hf.py would, records its args
    fake_python.write_text(
        f'#!/bin/bash\necho "$@" >> {python_calls}\n'
        'while (($#)); do [[ $1 == --out ]] && mkdir -p "$2" && touch "$2/model.safetensors"; '
        "shift; done\n"
    )
    fake_python.chmod(0o755)
    # A checkout of its own, so the test does not depend on the real config's contents.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT / "shells", checkout / "shells")
    (checkout / "configs").mkdir()
    (checkout / "configs" / "retrofit_two_phase.yaml").write_text("")
    env.update(PYTHON=str(fake_python), RECUR_ROOT=str(checkout))
    script = str(checkout / "shells" / "retrofit.sh")
    result = subprocess.run(
        ["bash", script, str(model), "4", "10", "8", "4", "--steps", "9"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    init = tmp_path / "out" / "retrofit_init" / "TinyLlama-4-10-8-4"
    assert python_calls.read_text().split() == [
        "utils/convert_hf.py",
        "--arch",
        "llama",
        "--model_path",
        str(model),
        "--out",
        str(init),
        "--prelude_size",
        "4",
        "--start_index",
        "10",
        "--block_size",
        "8",
        "--coda_size",
        "4",
    ]
    (call,) = fake_sbatch()
    assert call[call.index("shells/launch.sh") :] == [
        "shells/launch.sh",
        "--config",
        "configs/retrofit_two_phase.yaml",
        "--init_from",
        str(init),
        "--out_dir",
        str(tmp_path / "out"),
        "--run_name",
        "retrofit_TinyLlama-4-10-8-4",
        "--steps",
        "9",
    ]
    again = subprocess.run(
        ["bash", script, str(model), "4", "10", "8", "4"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "using the existing conversion" in again.stderr
    assert len(python_calls.read_text().splitlines()) == 1  # converted once


def test_retrofit_rejects_bad_input(env, tmp_path):
    usage = _run("retrofit.sh", env, "/x", "4")
    assert usage.returncode == 2 and "usage: shells/retrofit.sh" in usage.stderr
    missing = _run("retrofit.sh", env, str(tmp_path / "none"), "4", "10", "8", "4")
    assert missing.returncode == 2 and "has no config.json" in missing.stderr
