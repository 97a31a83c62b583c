"""Tests for recur.optim: schedules, parameter groups, Muon (+ DTensor path), ELLISAdam, build_optimizer."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from recur.models import ModelConfig, create_model
from recur.optim import ELLISAdam, LRScheduleConfig, MuonWithAdamW, OptimConfig, build_optimizer, lr_at, set_lr
from recur.optim.muon import zeropower_via_newtonschulz
from recur.optim.schedules import wsd_decay_steps
from tests.optim_dtensor_worker import dtensor_muon_worker, muon_problem


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one intra-op thread is fastest and immune to a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("name", ["cosine", "wsd", "constant"])
@pytest.mark.parametrize("shape", ["linear", "1-sqrt"])
def test_schedule_start_end_and_monotone(name: str, shape: str) -> None:
    cfg = LRScheduleConfig(
        name=name, lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, decay_fraction=0.25, decay_shape=shape
    )
    total = 100
    lrs = [lr_at(s, cfg, total) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(1e-3 / 10, rel=1e-12)
    assert lrs[9] == 1e-3  # warmup reaches the peak exactly at step warmup_steps - 1
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))  # strictly increasing warmup
    post = lrs[9:]
    assert all(a >= b for a, b in zip(post, post[1:]))  # never increases after the peak
    end = 1e-3 if name == "constant" else 1e-3 * 0.1
    assert lrs[total - 1] == pytest.approx(end, rel=1e-12)
    assert lrs[total + 4] == pytest.approx(end, rel=1e-12)  # past the end: stays at the final value
    if name == "cosine":
        assert lrs[10] == 1e-3 and lrs[98] > end
    if name == "wsd":
        decay_start = total - wsd_decay_steps(cfg, total)
        assert decay_start == 75
        assert all(lr == 1e-3 for lr in lrs[9:decay_start])  # the stable phase is exactly flat
        assert all(a > b for a, b in zip(lrs[decay_start - 1 : total], lrs[decay_start:total]))


def test_wsd_shapes_differ_and_cosine_midpoint() -> None:
    lin = LRScheduleConfig(name="wsd", lr=1.0, min_lr_ratio=0.0, warmup_steps=0, decay_fraction=0.5)
    sqrt = LRScheduleConfig(
        name="wsd", lr=1.0, min_lr_ratio=0.0, warmup_steps=0, decay_fraction=0.5, decay_shape="1-sqrt"
    )
    # decay covers steps 50..99; step 74 is at progress 0.5
    assert lr_at(74, lin, 100) == pytest.approx(0.5)
    assert lr_at(74, sqrt, 100) == pytest.approx(1 - math.sqrt(0.5))
    cos = LRScheduleConfig(name="cosine", lr=1.0, min_lr_ratio=0.0, warmup_steps=0)
    assert lr_at(0, cos, 101) == 1.0 and lr_at(50, cos, 101) == pytest.approx(0.5)


def test_schedule_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="optim.schedule.name"):
        LRScheduleConfig(name="linear").validate()
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, LRScheduleConfig(name="wsd", warmup_steps=90, decay_fraction=0.2), 100)
    with pytest.raises(ValueError, match="optim.name"):
        OptimConfig(name="sgd").validate()


# ----------------------------------------------------------------------------- parameter groups


def _tiny_model(tie: bool) -> nn.Module:
    cfg = ModelConfig(variant="recurrent", vocab_size=40, d_model=32, n_heads=2, tie_embeddings=tie, max_seq_len=16)
    return create_model(cfg)


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_no_decay_and_muon_selection(tie: bool) -> None:
    model = _tiny_model(tie)
    names = {id(p): n for n, p in model.named_parameters()}
    opt = build_optimizer(model, OptimConfig(name="muon", muon_lr_scale=2.0))
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))  # every param exactly once
    for group in opt.param_groups:
        for p in group["params"]:
            name = names[id(p)]
            hidden_matrix = p.ndim == 2 and "embeddings" not in name and "lm_head" not in name
            assert bool(group.get("use_muon")) == hidden_matrix, name
            if "norm" in name or "embeddings" in name or p.ndim < 2:
                assert group["weight_decay"] == 0.0, name
            else:
                assert group["weight_decay"] == 0.1, name
        assert group["lr"] == pytest.approx(3e-4 * (2.0 if group.get("use_muon") else 1.0))
    muon_names = {names[id(p)] for g in opt.param_groups if g.get("use_muon") for p in g["params"]}
    assert "core.0.attn.wq.weight" in muon_names and "adapter.weight" in muon_names
    set_lr(opt, 1e-2)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([1e-2, 1e-2, 2e-2][-len(opt.param_groups) :])


# ----------------------------------------------------------------------------- Muon


def test_newton_schulz_is_near_orthogonal() -> None:
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(64, 64, generator=gen))
    conditioned = u @ torch.diag(torch.logspace(0, -2, 64)) @ v  # condition number 100: far from orthogonal
    matrices = [conditioned, torch.randn(128, 32, generator=gen), torch.randn(32, 96, generator=gen)]
    for m in matrices:
        out = zeropower_via_newtonschulz(m, steps=5).float()
        assert out.shape == m.shape
        s = torch.linalg.svdvals(out)
        # Five quintic steps trade exactness for speed: singular values land in ~[0.68, 1.2], not on 1
        # (values below ~1% of the top one would need more steps; see the NS_COEFFICIENTS note).
        assert s.min() > 0.6 and s.max() < 1.25, (tuple(m.shape), s.min(), s.max())
        # The singular vectors are kept: out ~ U V^T of the input.
        uu, _, vv = torch.linalg.svd(m, full_matrices=False)
        assert nn.functional.cosine_similarity((uu @ vv).flatten(), out.flatten(), dim=0) > 0.97


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="this torch has no torch.optim.Muon")
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_muon_bitwise(adjust: str, nesterov: bool) -> None:
    init, grads = muon_problem(1)
    ours = [nn.Parameter(p.clone()) for p in init]
    ref = [nn.Parameter(p.clone()) for p in init]
    opt = MuonWithAdamW(
        [{"params": ours, "use_muon": True}], lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr=adjust
    )
    ref_opt = torch.optim.Muon(ref, lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust)
    for step_grads in grads:
        for a, b, g in zip(ours, ref, step_grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


@pytest.mark.slow  # two spawned processes: ~10 s, mostly importing torch twice
def test_muon_dtensor_sharded_matches_unsharded(tmp_path) -> None:
    # The worker lives in a small module so that the spawned processes import only torch and recur.optim.
    mp.spawn(dtensor_muon_worker, args=(str(tmp_path / "pg_init"),), nprocs=2, join=True)


def test_muon_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        MuonWithAdamW([{"params": [nn.Parameter(torch.zeros(3))], "use_muon": True}], lr=0.1)


# ----------------------------------------------------------------------------- ELLISAdam


def _ellis_step_delta(grads: list[torch.Tensor], **opts) -> torch.Tensor:
    p = nn.Parameter(torch.zeros_like(grads[0]))
    opt = ELLISAdam([p], lr=0.1, weight_decay=0.0, **opts)
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
    return p.detach() - before


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(1e-6, 1e6), steps=st.integers(1, 4))
def test_ellis_atan_update_bounded(seed: int, scale: float, steps: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(7, 5, generator=gen) * scale * torch.rand(7, 5, generator=gen) for _ in range(steps)]
    for clip in (False, True):
        delta = _ellis_step_delta(grads, atan=True, update_clip=clip)
        assert delta.abs().max() <= 0.1 * math.pi / 2 * (1 + 1e-6)
        assert torch.isfinite(delta).all()


def test_ellis_grad_norm_makes_step_scale_invariant() -> None:
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 6, generator=gen) for _ in range(3)]
    for atan in (False, True):
        small = _ellis_step_delta([g * 1e-4 for g in grads], grad_norm=True, atan=atan)
        big = _ellis_step_delta([g * 1e4 for g in grads], grad_norm=True, atan=atan)
        assert torch.allclose(small, big, rtol=1e-5, atol=1e-8)


def test_ellis_update_clip_damps_a_gradient_spike() -> None:
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(8, 8, generator=gen) * 1e-3 for _ in range(20)] + [torch.randn(8, 8, generator=gen)]
    spike_plain = _ellis_step_delta(grads, atan=False, update_clip=False)
    spike_clipped = _ellis_step_delta(grads, atan=False, update_clip=True)
    rms = lambda t: t.square().mean().sqrt()  # noqa: E731
    assert rms(spike_clipped) < 0.3 * rms(spike_plain)
    # Without a spike (first step: v_hat = g^2, ratio RMS = 1) clipping changes nothing.
    calm = grads[:1]
    assert torch.equal(
        _ellis_step_delta(calm, atan=False, update_clip=True), _ellis_step_delta(calm, atan=False, update_clip=False)
    )


def test_ellis_without_options_is_adamw() -> None:
    gen = torch.Generator().manual_seed(5)
    init = torch.randn(5, 4, generator=gen)
    a, b = nn.Parameter(init.clone()), nn.Parameter(init.clone())
    ours = ELLISAdam([a], lr=0.01, weight_decay=0.1, atan=False, update_clip=False, finite_check=False)
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 4, generator=gen)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


def test_ellis_finite_check_skips_only_the_bad_tensor() -> None:
    gen = torch.Generator().manual_seed(6)
    good, bad = nn.Parameter(torch.randn(4, 4, generator=gen)), nn.Parameter(torch.randn(3, generator=gen))
    opt = ELLISAdam([good, bad], lr=0.1, weight_decay=0.1)
    good.grad, bad.grad = torch.randn(4, 4, generator=gen), torch.randn(3, generator=gen)
    opt.step()
    bad_before, state_before = bad.detach().clone(), copy.deepcopy(opt.state[bad])
    good_before = good.detach().clone()
    good.grad = torch.randn(4, 4, generator=gen)
    bad.grad = torch.tensor([1.0, float("nan"), float("inf")])
    opt.step()
    assert torch.equal(bad, bad_before)  # untouched, weight decay included
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[bad][key], state_before[key]), key
    assert not torch.equal(good, good_before) and torch.isfinite(good).all()
    assert opt.state[good]["step"].item() == 2 and opt.skipped_tensors() == 1


def test_ellis_finite_check_on_first_step_stays_finite() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = ELLISAdam([p], lr=0.1)
    p.grad = torch.full((3,), float("nan"))
    opt.step()
    p.grad = torch.ones(3)
    opt.step()
    assert torch.isfinite(p).all() and opt.state[p]["step"].item() == 1


# ----------------------------------------------------------------------------- every optimizer end to end


def _regression(seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 4)
    )
    x = torch.randn(256, 16, generator=gen)
    y = torch.sin(x[:, :4] * 2) + x[:, 4:8] * x[:, 8:12]
    return model, x, y


def _train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


OPTIMIZER_CONFIGS = {
    "adamw": OptimConfig(name="adamw", schedule=LRScheduleConfig(lr=3e-3)),
    # A 64-wide toy needs a larger Muon step than match_rms_adamw's 0.2*sqrt(64) gives at the AdamW lr.
    "muon": OptimConfig(name="muon", muon_lr_scale=10.0, schedule=LRScheduleConfig(lr=3e-3)),
    "ellisadam": OptimConfig(name="ellisadam", ellis_grad_norm=True, schedule=LRScheduleConfig(lr=3e-3)),
}


@pytest.mark.parametrize("name", list(OPTIMIZER_CONFIGS))
def test_optimizer_lowers_loss(name: str) -> None:
    model, x, y = _regression(7)
    losses = _train(model, build_optimizer(model, OPTIMIZER_CONFIGS[name]), x, y, steps=60)
    assert losses[-1] < 0.25 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize("via", ["torch.save", "distributed.checkpoint.state_dict"])
@pytest.mark.parametrize("name", list(OPTIMIZER_CONFIGS))
def test_state_dict_round_trip_is_bit_identical(name: str, via: str, tmp_path) -> None:
    model, x, y = _regression(8)
    cfg = OPTIMIZER_CONFIGS[name]
    opt = build_optimizer(model, cfg)
    _train(model, opt, x, y, steps=5)
    set_lr(opt, 1e-3)
    resumed, _, _ = _regression(9)  # different init: everything must come from the checkpoint
    resumed_opt = build_optimizer(resumed, cfg)
    if via == "torch.save":
        torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, tmp_path / "ckpt.pt")
        ckpt = torch.load(tmp_path / "ckpt.pt")
        resumed.load_state_dict(ckpt["model"])
        resumed_opt.load_state_dict(ckpt["optim"])
    else:  # the FQN-keyed path recur.checkpoint uses (it first runs a zero-lr step on a fresh optimizer)
        model_sd, optim_sd = copy.deepcopy(get_state_dict(model, opt))
        set_state_dict(resumed, resumed_opt, model_state_dict=model_sd, optim_state_dict=optim_sd)
    assert [g["lr"] for g in resumed_opt.param_groups] == [g["lr"] for g in opt.param_groups]

    assert _train(model, opt, x, y, steps=3) == _train(resumed, resumed_opt, x, y, steps=3)
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
