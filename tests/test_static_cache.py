"""The preallocated KV cache: decoding equals a no-cache forward at every position, and compiled decoding
does not recompile from token to token or when the recurrence depth changes."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from recur.eval.generate import ExitRule, generate
from recur.models import ModelConfig, create_model
from recur.models.layers import KVCache
from recur.parallel.compile import compile_model

THOUGHTS = {"latent": {"n_thoughts": 4, "thought_chunk": 4}}
SSM = {**THOUGHTS, "ssm": {"headdim": 16, "d_state": 8, "scan_chunk": 8}}
VARIANTS = {  # variant -> its knob groups, small enough for CPU
    "baseline": {},
    "recurrent": {},
    "shared_loop": {},
    "latent": THOUGHTS,
    "ssm": SSM,
    "ssm_mem": {**SSM, "memory": {"n_slots": 4, "chunk": 8}},
}


def tiny(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict(
        dict(
            variant=variant,
            vocab_size=40,
            d_model=32,
            n_layers=3,
            n_heads=4,
            n_kv_heads=2,
            max_seq_len=32,
            init_std=0.2,
            **VARIANTS[variant],
        )
    )  # n_kv_heads < n_heads: GQA
    return create_model(cfg).eval()


@pytest.mark.parametrize(
    "variant,depth", [("baseline", 1)] + [(v, r) for v in VARIANTS if v != "baseline" for r in (1, 3, 5)]
)
def test_cached_greedy_decoding_matches_full_forward(variant, depth):
    model = tiny(variant)
    ids = torch.randint(8, 40, (2, 5), generator=torch.Generator().manual_seed(1))
    cache = KVCache(capacity=16)
    logits = model.decode_step(ids, cache, depth)
    with torch.no_grad():
        for _ in range(11):  # to the cache's last position
            full = model(ids, num_steps=depth).logits[:, -1]
            torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5)
            token = logits.argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], dim=1)
            logits = model.decode_step(token, cache, depth)
    assert cache.seen_tokens == cache.capacity == 16


def test_padded_decoding_matches_each_prompt_alone():
    model = tiny("recurrent")
    prompts = [[9, 10, 11], [12, 13, 14, 15, 16, 17]]
    batched = generate(model, prompts, 8, set(), num_steps=3, pad_id=0).tokens
    alone = [generate(model, [p], 8, set(), num_steps=3).tokens[0] for p in prompts]
    assert batched == alone


def test_cache_without_capacity_grows_and_stays_exact():
    model = tiny("recurrent")
    ids = torch.randint(8, 40, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = KVCache()
    pieces = [model.decode_step(ids[:, :3], cache, 2)] + [
        model.decode_step(ids[:, t : t + 1], cache, 2) for t in range(3, 20)
    ]
    with torch.no_grad():
        full = model(ids, num_steps=2).logits
    torch.testing.assert_close(torch.stack(pieces, 1), full[:, 2:], rtol=1e-5, atol=1e-5)
    assert cache.capacity == 24  # 3, then doubled to 6, 12, 24


@pytest.mark.parametrize("variant", ["recurrent", "ssm"])
def test_compiled_decoding_does_not_recompile(variant):
    """The trainer's --compile compiles each block (recur/parallel/compile.py). Once the prompt's and the
    one-token graphs exist, more tokens of the same batch shape, other depths and adaptive exit reuse them;
    other prompt lengths and budgets too (evaluation graphs have dynamic sizes from the start; a Mamba
    prompt no longer than its conv window takes another branch, hence prompts > 4 tokens here). The
    eager backend runs the same dynamo guards as inductor, which is what decides recompiles."""
    model = tiny(variant)
    prompt = [[9, 10, 11, 12, 19]]
    expected = {r: generate(model, prompt, 6, set(), num_steps=r).tokens for r in (2, 4, 3)}
    torch._dynamo.reset()
    compile_model(model, backend="eager")
    no_recompile = torch._dynamo.config.patch(error_on_recompile=True)
    try:
        assert generate(model, prompt, 6, set(), num_steps=2).tokens == expected[2]  # compiles
        with no_recompile:
            assert generate(model, prompt, 6, set(), num_steps=4).tokens == expected[4]
            assert generate(model, prompt, 6, set(), num_steps=3).tokens == expected[3]
            if variant == "recurrent":
                generate(model, prompt, 6, set(), num_steps=5, exit_rule=ExitRule("kl", 1e-3))
            generate(model, [[13, 14, 15, 16, 17, 20]], 9, set(), num_steps=2)
            generate(model, [[13, 14, 15, 16, 17, 18, 21]], 12, set(), num_steps=4)
    finally:
        torch._dynamo.reset()
