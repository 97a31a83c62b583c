import pytest
import torch

from recur.models import ModelConfig, create_model
from recur.models.layers import KVCache


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(
        variant="recurrent",
        vocab_size=97,
        d_model=64,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=64,
        n_prelude=1,
        n_core=2,
        n_coda=1,
    )
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("block_norm", ["pre", "post", "sandwich"])
def test_recurrent_r1_equals_baseline_with_passthrough_adapter(block_norm):
    """The property converted HF models rely on, for every block kind."""
    torch.manual_seed(0)
    looped = create_model(tiny_cfg(adapter_init="passthrough", block_norm=block_norm))
    base = create_model(
        tiny_cfg(variant="baseline", n_prelude=None, n_core=None, n_coda=None, n_layers=4, block_norm=block_norm)
    )
    blocks = list(looped.prelude) + list(looped.core) + list(looped.coda)
    for dst, src in zip(base.layers, blocks):
        dst.load_state_dict(src.state_dict())
    base.tok_embeddings.load_state_dict(looped.tok_embeddings.state_dict())
    base.norm.load_state_dict(looped.norm.state_dict())
    x = torch.randint(0, 97, (2, 33))
    for mode in (looped.train, looped.eval):  # random initial state must not matter with passthrough
        mode()
        torch.testing.assert_close(looped(x, num_steps=1).logits, base(x).logits, rtol=0, atol=1e-5)
    looped.set_passthrough_adapter()
    with torch.no_grad():
        looped.adapter.weight[:, :64] += 0.1  # let the state leak in: the equivalence must then break
    assert not torch.allclose(looped(x, num_steps=1).logits, base(x).logits, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_state_adapter_iterates_the_core_on_its_own_output(steps):
    """adapter_init "state" with s_0 = prelude output: r steps equal a plain decoder whose layers are the
    prelude, the core repeated r times and the coda (the retrofit start where extra depth carries state)."""
    torch.manual_seed(0)
    looped = create_model(tiny_cfg(adapter_init="state", init_state="input", block_norm="pre"))
    blocks = list(looped.prelude) + list(looped.core) * steps + list(looped.coda)
    base = create_model(
        tiny_cfg(variant="baseline", n_prelude=None, n_core=None, n_coda=None, n_layers=len(blocks), block_norm="pre")
    )
    for dst, src in zip(base.layers, blocks):
        dst.load_state_dict(src.state_dict())
    base.tok_embeddings.load_state_dict(looped.tok_embeddings.state_dict())
    base.norm.load_state_dict(looped.norm.state_dict())
    x = torch.randint(0, 97, (2, 33))
    torch.testing.assert_close(looped(x, num_steps=steps).logits, base(x).logits, rtol=0, atol=1e-5)


def _core_grads(model, x, num_steps):
    model.zero_grad()
    model(x, targets=x, num_steps=num_steps).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_truncated_backprop_equals_backprop_through_last_k_steps():
    torch.manual_seed(0)
    model = create_model(tiny_cfg(init_state="zeros"))
    x = torch.randint(0, 97, (2, 16))
    n, k = 3, 2
    got = _core_grads(model, x, (n, k))

    # Reference: run n iterations, cut the graph, then differentiate through k more.
    model.zero_grad()
    from recur.models.layers import AttentionContext

    cos, sin = model.rotary(torch.arange(16))
    ctx = AttentionContext(cos=cos, sin=sin)
    e = model.run_blocks(model.prelude, model.tok_embeddings(x), ctx, "p")
    s = torch.zeros_like(e)
    for step in range(n):
        s = model.iterate(s, e, ctx, step).detach()
    for step in range(n, n + k):
        s = model.iterate(s, e, ctx, step)
    from recur.models.lm import lm_loss

    lm_loss(model.norm(model.run_blocks(model.coda, s, ctx, "c")), model.lm_head, x, None).backward()
    want = {n_: p.grad.clone() for n_, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    full = _core_grads(model, x, (0, n + k))
    assert not torch.allclose(full["core.0.mlp.w2.weight"], got["core.0.mlp.w2.weight"])


def saved_activation_bytes(model, x, num_steps) -> int:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, targets=x, num_steps=num_steps)
    return total


def test_activation_memory_grows_with_k_not_r():
    model = create_model(tiny_cfg())
    x = torch.randint(0, 97, (2, 32))
    k2_r4 = saved_activation_bytes(model, x, (2, 2))
    k2_r32 = saved_activation_bytes(model, x, (30, 2))
    k4_r4 = saved_activation_bytes(model, x, (0, 4))
    assert k2_r4 == k2_r32
    assert k4_r4 > 1.5 * k2_r4 - saved_activation_bytes(model, x, (0, 1))


@pytest.mark.parametrize("variant", ["baseline", "recurrent", "shared_loop"])
@pytest.mark.parametrize("steps", [1, 3])
def test_cached_forward_matches_full_forward(variant, steps):
    torch.manual_seed(0)
    model = create_model(
        tiny_cfg(variant=variant)
        if variant == "recurrent"
        else tiny_cfg(variant=variant, n_prelude=None, n_core=None, n_coda=None, n_layers=3)
    ).eval()
    x = torch.randint(0, 97, (2, 12))
    full = model(x, num_steps=steps).logits
    cache = KVCache()
    parts = [model(x[:, :5], num_steps=steps, cache=cache).logits]
    parts += [model(x[:, t : t + 1], num_steps=steps, cache=cache).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-4, atol=1e-5)


def test_document_mask_isolates_documents():
    torch.manual_seed(0)
    model = create_model(tiny_cfg()).eval()
    x = torch.randint(0, 97, (1, 20))
    doc_ids = torch.tensor([[0] * 8 + [1] * 12])
    y = x.clone()
    y[0, :8] = torch.randint(0, 97, (8,))  # change the first document only
    a = model(x, doc_ids=doc_ids).logits[0, 8:]
    b = model(y, doc_ids=doc_ids).logits[0, 8:]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(model(x).logits[0, 8:], model(y).logits[0, 8:], atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(variant="nope"), "unknown variant 'nope'"),
        (dict(n_layers=5), "does not match --model.n_layers 5"),
        (dict(n_core=None), "must be given together"),
        (dict(n_heads=3), "not divisible by --model.n_heads 3"),
        (dict(injection="mul"), "--model.injection"),
    ],
)
def test_bad_model_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model(tiny_cfg(**kwargs))


def test_sequence_longer_than_context_is_rejected():
    model = create_model(tiny_cfg(max_seq_len=8))
    with pytest.raises(ValueError, match="max_seq_len 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
