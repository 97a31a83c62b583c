"""Greedy generation: per-step KV cache == no cache, adaptive exit with ε = 0 == fixed depth, bounded decoding."""

from __future__ import annotations

import pytest
import torch

from recur.eval.generate import ExitRule, adaptive_decode_step, generate
from recur.models import create_model
from recur.models.config import ModelConfig
from recur.models.layers import KVCache

STOP = {7}


def make(variant: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        variant=variant, vocab_size=40, d_model=32, n_layers=3, n_heads=2, max_seq_len=48, init_std=0.2, **overrides
    )  # a large init gives varied, non-constant greedy outputs
    return create_model(cfg).eval()


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    lengths = [3, 5, 5, 9]
    return [torch.randint(8, 40, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("variant", ["recurrent", "shared_loop", "baseline"])
@pytest.mark.parametrize("depth", [1, 3, 5])
def test_cached_generation_equals_uncached(variant, depth):
    model = make(variant)
    cached = generate(model, prompts(), 12, STOP, num_steps=depth)
    uncached = generate(model, prompts(), 12, STOP, num_steps=depth, use_cache=False)
    assert cached.tokens == uncached.tokens
    assert len({tuple(t) for t in cached.tokens}) > 1 or variant == "baseline"


@pytest.mark.parametrize(
    "variant,extra",
    [("recurrent", {}), ("shared_loop", {}), ("recurrent", {"injection": "add", "init_state": "zeros"})],
)
@pytest.mark.parametrize("criterion", ["delta", "kl"])
def test_adaptive_exit_with_zero_eps_equals_fixed_depth(variant, extra, criterion):
    model = make(variant, **extra)
    for depth in (1, 3, 4):
        fixed = generate(model, prompts(), 10, STOP, num_steps=depth)
        adaptive = generate(model, prompts(), 10, STOP, num_steps=depth, exit_rule=ExitRule(criterion, 0.0))
        assert adaptive.tokens == fixed.tokens
        assert all(s == depth for row in adaptive.steps for s in row)


def test_adaptive_exit_uses_fewer_steps_and_fills_the_cache():
    model = make("recurrent", state_norm=True)
    out = generate(model, prompts(), 10, STOP, num_steps=6, exit_rule=ExitRule("delta", float("inf")))
    # ε = ∞: every decoded token exits after its first step; the prompt runs at full depth.
    assert all(row[0] == 6 and all(s == 1 for s in row[1:]) for row in out.steps)
    cache = KVCache()
    ids = torch.tensor([prompts()[1]])
    model(ids, num_steps=6, cache=cache)
    rule = ExitRule("kl", 1e-2)
    for token in (9, 11, 13):
        _, steps = adaptive_decode_step(model, torch.tensor([[token]]), cache, 6, rule)
        assert 1 <= int(steps) <= 6
        # Every (step, layer) slot holds exactly one entry per position, whatever step the token exited at.
        assert {slot.filled for slot in cache.kv.values()} == {cache.seen_tokens}


def test_decoding_is_bounded_by_max_new_tokens_and_context():
    model = make("recurrent")
    out = generate(model, prompts(), 5, set(), num_steps=2)  # no stop token: only the cap ends decoding
    assert [len(t) for t in out.tokens] == [5] * 4
    assert set(out.stop_reasons) == {"max_new_tokens"}
    long_prompt = [[9] * 44]
    out = generate(model, long_prompt, 100, set(), num_steps=2)
    assert len(out.tokens[0]) == 48 - 44 and out.stop_reasons == ["context"]
    with pytest.raises(ValueError, match="leaves no room"):
        generate(model, [[9] * 48], 4, set())


def test_stop_token_ends_decoding_and_is_not_returned():
    model = make("recurrent")
    first = generate(model, prompts(), 6, set(), num_steps=2).tokens
    stop = {first[0][2]}
    out = generate(model, prompts(), 6, stop, num_steps=2)
    assert out.tokens[0] == first[0][: first[0].index(first[0][2])]
    assert out.stop_reasons[0] == "stop_token"


def test_bad_generation_requests():
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(make("recurrent"), prompts(), 0, STOP)
    with pytest.raises(ValueError, match="adaptive exit needs a looped model"):
        generate(make("baseline"), prompts(), 4, STOP, exit_rule=ExitRule("kl", 0.1))
    with pytest.raises(ValueError, match="--exit_criterion"):
        ExitRule("entropy", 0.1)
    with pytest.raises(ValueError, match="num_steps must total at least 1"):
        generate(make("recurrent"), prompts(), 4, STOP, num_steps=0)
