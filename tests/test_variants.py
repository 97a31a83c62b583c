"""The ladder's variants: causality, exact cached generation, ACT halting, training and exact resume."""

from __future__ import annotations

import copy

import pytest
import torch

from recur.models import ModelConfig, create_model
from recur.models.layers import KVCache

LADDER = ("baseline", "shared_loop", "recurrent", "latent", "act", "ssm", "ssm_mem")
THOUGHT_VARIANTS = ("latent", "act", "ssm", "ssm_mem")


def tiny_config(variant: str, **extra) -> ModelConfig:
    """Variant knobs by their flat names (n_thoughts=4, ssm_headdim=16), as a saved legacy `extra` holds them:
    ModelConfig.from_dict maps them into the variant groups and refuses a knob the variant does not read."""
    knobs = {}
    if variant in THOUGHT_VARIANTS:
        knobs.update(n_thoughts=4, thought_chunk=4)
    if variant.startswith("ssm"):
        knobs.update(ssm_headdim=16, ssm_d_state=8, ssm_scan_chunk=8)
    if variant == "ssm_mem":
        knobs.update(n_memory=4, memory_chunk=8)
    knobs.update(extra)
    return ModelConfig.from_dict(
        dict(variant=variant, vocab_size=40, d_model=32, n_layers=3, n_heads=2, max_seq_len=64, extra=knobs)
    )


def tiny_eval_model(variant: str, **extra):
    """A seeded tiny model of `variant` in eval mode (no dropout), the same weights on every call."""
    torch.manual_seed(0)
    return create_model(tiny_config(variant, **extra)).eval()


@pytest.mark.parametrize("variant", THOUGHT_VARIANTS)
def test_position_t_ignores_later_tokens(variant):
    model = tiny_eval_model(variant)
    x = torch.randint(0, 40, (2, 21))
    with torch.no_grad():
        base = model(x, num_steps=3).logits
        for cut in (1, 5, 12, 20):  # chunk heads, middles and the last position
            changed = x.clone()
            changed[:, cut:] = (changed[:, cut:] + 7) % 40
            other = model(changed, num_steps=3).logits
            assert torch.equal(base[:, :cut], other[:, :cut]), f"position < {cut} saw a later token"
            assert not torch.allclose(base[:, cut:], other[:, cut:])


@pytest.mark.parametrize("variant", THOUGHT_VARIANTS)
def test_doc_ids_isolate_documents(variant):
    model = tiny_eval_model(variant)
    x = torch.randint(0, 40, (1, 16))
    docs = torch.tensor([[0] * 6 + [1] * 10])
    with torch.no_grad():
        base = model(x, num_steps=2, doc_ids=docs).logits
        changed = x.clone()
        changed[:, :6] = (changed[:, :6] + 3) % 40
        other = model(changed, num_steps=2, doc_ids=docs).logits
    assert torch.allclose(base[:, 6:], other[:, 6:], atol=1e-6)


@pytest.mark.parametrize("variant", THOUGHT_VARIANTS)
def test_cached_generation_matches_full_forward(variant):
    model = tiny_eval_model(variant)
    x = torch.randint(0, 40, (3, 18))
    with torch.no_grad():
        full = model(x, num_steps=3).logits
        cache = KVCache()
        pieces = [model(x[:, :6], num_steps=3, cache=cache).logits]
        pieces += [model(x[:, t : t + 1], num_steps=3, cache=cache).logits for t in range(6, 18)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_act_threshold_zero_takes_one_step():
    torch.manual_seed(0)
    model = create_model(tiny_config("act", threshold=0.0))
    out = model(torch.randint(0, 40, (2, 12)), targets=torch.randint(0, 40, (2, 12)), num_steps=8)
    assert out.stats["mean_steps_used"] == 1.0
    # The remainder is 1 at step one, so the ponder cost is exactly lambda · (1 + 1).
    assert out.aux_loss.item() == pytest.approx(0.01 * 2.0)


def test_act_mixture_weights_sum_to_one_and_halts_per_unit():
    model = tiny_eval_model("act", halt_bias=0.0)
    stream = model.thought_stream
    with torch.no_grad():
        stream.halt.weight.normal_(std=2.0)  # spread p_halt so units halt at different steps
    h = torch.randn(4, 16, 32)
    from recur.models.layers import AttentionContext

    ctx = AttentionContext(cos=torch.zeros(16, 16), sin=torch.zeros(16, 16))
    with torch.no_grad():
        mixture, layout, stats, _ = stream.iterate(h, ctx, 8, 8)
    assert 1.0 < stats["mean_steps_used"] < 8.0


def _ponder_training(lambda_ponder: float) -> float:
    torch.manual_seed(0)
    model = create_model(tiny_config("act", lambda_ponder=lambda_ponder, halt_bias=-2.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randint(0, 40, (4, 16), generator=gen)
        out = model(x[:, :-1], targets=x[:, 1:], num_steps=6)
        (out.loss + out.aux_loss).backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        return model(x[:, :-1], targets=x[:, 1:], num_steps=6).stats["mean_steps_used"]


def test_raising_lambda_ponder_lowers_mean_steps():
    assert _ponder_training(1.0) < _ponder_training(0.0) - 0.5


def test_invalid_knobs_are_rejected():
    with pytest.raises(ValueError, match="thought_chunk"):
        create_model(tiny_config("latent", thought_chunk=0))
    with pytest.raises(ValueError, match="threshold"):
        create_model(tiny_config("act", threshold=1.5))
    with pytest.raises(ValueError, match="unknown keys"):
        create_model(tiny_config("latent", lambda_ponder=0.1))
    with pytest.raises(ValueError, match="ssm.headdim"):
        create_model(tiny_config("ssm", ssm_headdim=48))


def _batches(steps: int) -> list[torch.Tensor]:
    """A learnable stream: each row counts upward from a random start (mod vocab)."""
    gen = torch.Generator().manual_seed(3)
    starts = torch.randint(0, 40, (steps, 8, 1), generator=gen)
    return list((starts + torch.arange(17)) % 40)


def _train(model, opt, batches, start: int, stop: int) -> list[float]:
    losses = []
    for step in range(start, stop):
        x = batches[step]
        out = model(x[:, :-1], targets=x[:, 1:], num_steps=(1, 2))
        loss = out.loss + (out.aux_loss if out.aux_loss is not None else 0.0)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("variant", LADDER)
def test_trains_and_resumes_bit_identically(variant):
    steps, half = 60, 30
    batches = _batches(steps)
    torch.manual_seed(0)
    model = create_model(tiny_config(variant))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = _train(model, opt, batches, 0, half)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), torch.get_rng_state())
    losses += _train(model, opt, batches, half, steps)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, f"{variant}: loss did not fall"

    torch.manual_seed(123)  # a different process state; the checkpoint must restore everything
    resumed = create_model(tiny_config(variant))
    resumed.load_state_dict(saved[0])
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=3e-3)
    opt2.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    _train(resumed, opt2, batches, half, steps)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{variant}: {name} differs after resume"


@pytest.mark.parametrize("variant", ["baseline", "recurrent", *THOUGHT_VARIANTS])
def test_evaluation_sweeps_depth_exactly_for_models_that_use_it(variant):
    """Thought variants iterate num_steps times: evaluation must run them at each requested depth (it used
    to treat every non-looped model like the baseline and score them at one thought iteration only)."""
    from recur.eval.meta import effective_depths

    model = tiny_eval_model(variant)
    x = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        one, four = (model(x, num_steps=n).logits for n in (1, 4))
    assert model.uses_depth == (not torch.equal(one, four))
    assert effective_depths(model, [1, 4]) == ([1, 4] if model.uses_depth else [1])
