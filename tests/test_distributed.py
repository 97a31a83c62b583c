"""Distributed training, fast part: launch topology (torchrun / slurm), nodelists, backend choice,
DeepSpeed config reconciliation, and the world-size invariance of the recurrent model's initial noise."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recur.models import create_model
from recur.models.looped import NoiseKey
from recur.models.presets import preset_config
from recur.parallel.backend import resolve_backend
from recur.parallel.config import DistConfig
from recur.parallel.deepspeed import build_deepspeed_config
from recur.parallel.env import (
    expand_nodelist,
    init_distributed,
    launch_topology,
    shutdown_distributed,
    slurm_master_port,
)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("a1", ["a1"]),
        ("gpu[8-10]", ["gpu8", "gpu9", "gpu10"]),
        ("n[008-010]", ["n008", "n009", "n010"]),
        ("r[1-2]n[3,5]", ["r1n3", "r1n5", "r2n3", "r2n5"]),
        ("x[1-2],y,z[3]", ["x1", "x2", "y", "z3"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@given(st.lists(st.integers(0, 999), min_size=1, max_size=12, unique=True), st.integers(1, 4))
@settings(max_examples=50, deadline=None)
def test_expand_nodelist_ranges_roundtrip(numbers, width):
    numbers = sorted(numbers)
    pad = max(width, len(str(numbers[-1])))
    text = "node[" + ",".join(str(n).zfill(pad) for n in numbers) + "]"
    assert expand_nodelist(text) == [f"node{str(n).zfill(pad)}" for n in numbers]


@pytest.mark.parametrize("bad", ["node[1-", "node]1", "node[a-b]", "node[5-3]", ""])
def test_expand_nodelist_rejects(bad):
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        expand_nodelist(bad)


def test_topology_from_torchrun_wins_over_slurm():
    env = {
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h0",
        "MASTER_PORT": "1234",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "x[1-2]",
    }
    assert launch_topology(env) == {
        "rank": 3,
        "world_size": 8,
        "local_rank": 1,
        "master_addr": "h0",
        "master_port": 1234,
    }


def test_topology_from_slurm(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)  # no scontrol: use our parser
    env = {
        "SLURM_PROCID": "5",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-10]",
        "SLURM_JOB_ID": "123456",
    }
    topology = launch_topology(env)
    assert topology == {
        "rank": 5,
        "world_size": 8,
        "local_rank": 1,
        "master_addr": "gpu07",
        "master_port": slurm_master_port("123456"),
    }
    assert launch_topology(env, master_port=4000)["master_port"] == 4000
    assert slurm_master_port("123456") != slurm_master_port("123457")


def test_topology_errors_and_single_process():
    assert launch_topology({}) is None
    assert launch_topology({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # a 1-task allocation
    with pytest.raises(ValueError, match="MASTER_ADDR"):
        launch_topology({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        launch_topology({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"})


def test_a_one_rank_group_leaves_the_process_environment_as_it_found_it(monkeypatch):
    """An in-process run on a 1-rank group exports RANK/WORLD_SIZE for env://; left behind, they would win over
    srun's topology in every job the process launches afterwards (each rank would train alone)."""
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):  # a plain launch, even inside an allocation
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "keep-me")
    try:
        env = init_distributed("cpu", 1, always=True)
        assert env.world_size == 1 and torch.distributed.is_initialized() and os.environ["RANK"] == "0"
    finally:
        shutdown_distributed()
    assert "RANK" not in os.environ and "WORLD_SIZE" not in os.environ and os.environ["MASTER_ADDR"] == "keep-me"


def test_backend_choice_and_config_errors():
    assert resolve_backend("auto", 1) == "none" and resolve_backend("auto", 4) == "fsdp"
    assert resolve_backend("ddp", 1) == "ddp" and resolve_backend("deepspeed", 1) == "deepspeed"
    with pytest.raises(ValueError, match="--dist.backend"):
        DistConfig(backend="megatron").validate()
    with pytest.raises(ValueError, match="--dist.nan_policy"):
        DistConfig(nan_policy="ignore").validate()


def _ds_config(tmp_path, **values):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}, **values}))
    return path


def _build(path, **overrides):
    kwargs = dict(global_batch_size=32, micro_batch_size=4, accumulation_steps=4, grad_clip=1.0, bf16=False)
    return build_deepspeed_config(path, **{**kwargs, **overrides})


def test_deepspeed_config_auto_values_filled(tmp_path):
    config = _build(_ds_config(tmp_path, train_batch_size="auto", gradient_clipping=1.0))
    assert (
        config["train_batch_size"],
        config["train_micro_batch_size_per_gpu"],
        config["gradient_accumulation_steps"],
        config["gradient_clipping"],
        config["bf16"]["enabled"],
    ) == (32, 4, 4, 1.0, False)
    for stage in (1, 2, 3):
        shipped = _build(f"configs/deepspeed/zero{stage}.json", bf16=True)
        assert shipped["zero_optimization"]["stage"] == stage and shipped["bf16"]["enabled"] is True


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gradient_clipping": 0.5}, r"gradient_clipping = 0.5 contradicts --optim.grad_clip = 1.0"),
        ({"train_batch_size": 64}, r"train_batch_size = 64 contradicts --data.global_batch_size = 32"),
        ({"gradient_accumulation_steps": 2}, r"gradient_accumulation_steps = 2 contradicts"),
        ({"bf16": {"enabled": True}}, r"bf16.enabled = True contradicts"),
        ({"optimizer": {"type": "Adam"}}, r"'optimizer' block"),
        ({"fp16": {"enabled": True}}, r"fp16 is not supported"),
        ({"zero_optimization": {"stage": 0}}, r"zero_optimization.stage"),
    ],
)
def test_deepspeed_config_contradictions(tmp_path, values, message):
    with pytest.raises(ValueError, match=message) as error:
        _build(_ds_config(tmp_path, **values))
    assert str(tmp_path / "ds.json") in str(error.value)


def test_deepspeed_config_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--dist.deepspeed_config"):
        _build(tmp_path / "nope.json")


def test_state_noise_is_invariant_to_batch_split():
    """Rows 0..5 drawn as one batch equal rows drawn as 2x3 or 3x2 (ranks x micro-batches)."""
    like = torch.empty(6, 5, 8)
    whole = NoiseKey(seed=77, first_row=0).draw(like)
    for parts in (2, 3):
        rows = 6 // parts
        pieces = [NoiseKey(seed=77, first_row=i * rows).draw(like[:rows]) for i in range(parts)]
        assert torch.equal(torch.cat(pieces), whole)
    assert not torch.equal(NoiseKey(seed=78, first_row=0).draw(like), whole)
    assert not torch.equal(whole[0], whole[1])


def test_keyed_noise_makes_training_forward_reproducible():
    model = create_model(preset_config("tiny", "recurrent", d_model=32, n_heads=2, n_layers=3)).train()
    ids = torch.randint(0, 256, (4, 9))
    first = model(ids, targets=ids, num_steps=2, noise=NoiseKey(5, 0)).loss
    torch.randn(100)  # global RNG use in between must not matter
    second = model(ids, targets=ids, num_steps=2, noise=NoiseKey(5, 0)).loss
    assert torch.equal(first, second)
    halves = [NoiseKey(5, 0), NoiseKey(5, 2)]
    split = []
    for key, rows in zip(halves, (ids[:2], ids[2:])):
        split.append(model(rows, targets=rows, num_steps=2, noise=key).loss)
    torch.testing.assert_close(sum(split) / 2, first, rtol=1e-5, atol=1e-6)


def test_activation_checkpointing_keeps_gradients_and_names():
    """Composable per-block checkpointing: identical loss/gradients (no-grad + grad iterations), same names."""
    from recur.parallel.fsdp import apply_activation_checkpointing

    cfg = preset_config("tiny", "recurrent", d_model=32, n_heads=2, n_layers=4)
    plain, checkpointed = create_model(cfg).train(), create_model(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    apply_activation_checkpointing(checkpointed)
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    ids = torch.randint(0, 256, (3, 10))
    for model in (plain, checkpointed):
        model(ids, targets=ids, num_steps=(2, 3), noise=NoiseKey(1, 0)).loss.backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


class _AttentionCalls(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the fused attention kernels run (forward, and any recomputation in backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from recur.parallel.fsdp import ATTENTION_OPS

        self.count += func in ATTENTION_OPS
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("variant", ["baseline", "recurrent"])
def test_selective_checkpointing_keeps_gradients_and_does_not_recompute_attention(variant, autocast):
    """`--dist.ac_policy selective`: the same gradients as no checkpointing; backward recomputes the blocks
    but not their attention (full checkpointing runs every grad block's attention twice). Under autocast too,
    where a recomputed block casts weights that the forward took from autocast's cache."""
    from recur.parallel.fsdp import apply_activation_checkpointing

    cfg = preset_config("tiny", variant, d_model=32, n_heads=2, n_layers=4, attn_backend="sdpa")
    models = {policy: create_model(cfg).train() for policy in ("none", "full", "selective")}
    for policy in ("full", "selective"):
        models[policy].load_state_dict(models["none"].state_dict())
        apply_activation_checkpointing(models[policy], policy)
    ids = torch.randint(0, 256, (3, 10))
    calls = {}
    for policy, model in models.items():
        with _AttentionCalls() as counter, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, targets=ids, num_steps=(1, 2), noise=NoiseKey(1, 0)).loss
        with _AttentionCalls() as backward_counter:
            loss.backward()
        counter.count += backward_counter.count
        calls[policy] = counter.count
    blocks_with_grad = 4 if variant == "baseline" else 2 + 2 * 2  # prelude + coda + core x k
    assert calls["selective"] == calls["none"] and calls["full"] == calls["none"] + blocks_with_grad
    for policy in ("full", "selective"):
        for (name, a), b in zip(models["none"].named_parameters(), models[policy].parameters()):
            tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(b.grad, a.grad, **tol, msg=f"{policy}: {name}")
    with pytest.raises(ValueError, match="ac_policy"):
        apply_activation_checkpointing(models["none"], "some")
