"""A looped model must stay bounded far past its training depth (issue 14).

The degenerate training steps seen with the old pre-norm core (sampled r ≈ 20: loss exactly ln V, grad norm
0) come from the state growing with every iteration until the fp32 sum of squares inside RMSNorm overflows:
rsqrt(inf) = 0, the final norm outputs zeros, every logit is 0 and no gradient flows. The sandwich core
(the default for looped variants) renormalises the residual after every sublayer, so the state's RMS is
bounded by the norm weights for any r.
"""

import json
import math
import subprocess
import sys

import torch

from recur.eval.load import load_model
from recur.eval.perplexity import heldout_loss
from recur.models import ModelConfig, create_model
from recur.models.layers import AttentionContext, RMSNorm
from recur.models.looped import token_spread
from recur.parallel.env import DistEnv
from recur.train_loop import COLLAPSED_SPREAD, _warn_collapse
from tests.train_helpers import REPO


def _looped(**kw):
    cfg = ModelConfig(
        variant="recurrent", vocab_size=64, d_model=32, n_heads=4, max_seq_len=32, n_prelude=1, n_core=2, n_coda=1, **kw
    )
    torch.manual_seed(0)
    return create_model(cfg).eval()


def _state_rms(model, depth: int) -> list[float]:
    """RMS of the recurrent state after each of `depth` iterations on a fixed random batch."""
    x = torch.randint(0, 64, (2, 16))
    cos, sin = model.rotary(torch.arange(16))
    ctx = AttentionContext(cos=cos, sin=sin)
    with torch.no_grad():
        e = model.run_blocks(model.prelude, model.tok_embeddings(x), ctx, "prelude")
        s, out = model.initial_state(e), []
        for step in range(depth):
            s = model.iterate(s, e, ctx, step)
            out.append(float(s.float().pow(2).mean().sqrt()))
    return out


def _amplify(model, factor: float) -> None:
    """Scale every matrix: an adversarial stand-in for weights that grew during training."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "tok_embeddings" not in name:
                p.mul_(factor)


def test_default_looped_core_is_sandwich_and_bounded_for_any_depth():
    """Bounded whatever the weights and the initial state: amplified matrices, a state of RMS 1e6."""
    model = _looped(init_state_std=1e6)
    assert model.cfg.block_norm == "sandwich"
    _amplify(model, 4.0)
    bound = max(float(m.weight.detach().abs().max()) for m in model.core.modules() if isinstance(m, RMSNorm))
    rms = _state_rms(model, 256)
    assert all(math.isfinite(v) and v <= bound * 1.001 for v in rms), max(rms)
    model.train()  # training draws the (huge) random initial state
    logits = model(torch.randint(0, 64, (2, 16)), num_steps=256).logits
    assert torch.isfinite(logits).all() and logits.std() > 0


def test_overflowed_state_gives_uniform_logits_and_no_gradient():
    """What a step with an overflowed state looks like: loss exactly ln V and zero gradients."""
    norm, head = RMSNorm(8), torch.nn.Linear(8, 16, bias=False)
    state = torch.full((1, 3, 8), 3e19, requires_grad=True)  # sum of squares overflows fp32
    logits = head(norm(state))
    loss = torch.nn.functional.cross_entropy(logits.view(-1, 16), torch.zeros(3, dtype=torch.long))
    loss.backward()
    assert abs(loss.item() - math.log(16)) < 1e-6
    assert head.weight.grad.abs().max() == 0


def test_briefly_trained_default_recipe_is_finite_and_no_worse_at_r64(tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--out_dir",
        str(tmp_path),
        "--run_name",
        "run",
        "--steps",
        "40",
        "--optim.schedule.warmup_steps",
        "5",
        "--data.num_docs",
        "2000",
        "--data.global_batch_size",
        "16",
        "--checkpoint.interval",
        "0",
        "--eval.depths",
        "[1]",
        "--eval.num_samples",
        "2",
        "--log.plot_interval",
        "1000",
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    model, cfg, _ = load_model(run)
    assert cfg.variant == "recurrent" and cfg.block_norm == "sandwich"
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["stat/state_spread"] > COLLAPSED_SPREAD and "[collapse]" not in done.stderr
    loss = {
        r["depth"]: r["loss"]
        for r in heldout_loss(model, run / "data" / "val", [1, 64], max_rows=64, progress=False)["results"]
    }
    assert math.isfinite(loss[64]) and loss[64] <= loss[1], loss


def test_token_spread_tells_a_collapsed_state_from_a_healthy_one():
    torch.manual_seed(0)
    healthy = torch.randn(2, 64, 32)
    collapsed = torch.randn(2, 1, 32).expand(2, 64, 32) * 50 + 1e-4 * torch.randn(2, 64, 32)
    assert 0.9 < float(token_spread(healthy)) < 1.1
    assert float(token_spread(collapsed)) < 1e-4 < COLLAPSED_SPREAD


def test_collapse_warning_is_printed_once(capsys):
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    warned = _warn_collapse({"step": 5, "stat/state_spread": 0.5}, env, False)
    assert not warned and "[collapse]" not in capsys.readouterr().err
    warned = _warn_collapse({"step": 6, "stat/state_spread": 0.001}, env, warned)
    assert warned and "--optim.schedule.lr" in capsys.readouterr().err
    assert _warn_collapse({"step": 7, "stat/state_spread": 0.001}, env, warned)
    assert capsys.readouterr().err == ""
