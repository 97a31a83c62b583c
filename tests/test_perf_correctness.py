"""Correctness of the performance paths: chunked CE, per-block compile, attention backends."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from bench.perf_common import RecompileCounter
from recur.models import ModelConfig, create_model
from recur.models.attention import attend, resolve_backend
from recur.models.loss import full_lm_loss, lm_loss
from recur.parallel.compile import compile_model


def _tiny(variant: str = "recurrent", n_layers: int = 3, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        variant=variant, vocab_size=97, d_model=32, n_layers=n_layers, n_heads=4, n_kv_heads=2, max_seq_len=32, **kw
    )
    return create_model(cfg)


@pytest.mark.parametrize("chunk_rows", [1, 5, 16, 1000])
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_ce_equals_full_ce_with_gradients(chunk_rows: int, masked: bool) -> None:
    gen = torch.Generator().manual_seed(chunk_rows)
    head = torch.nn.Linear(24, 61, bias=False)
    hidden = torch.randn(3, 7, 24, generator=gen, requires_grad=True)
    targets = torch.randint(0, 61, (3, 7), generator=gen)
    targets[0, 2] = -100  # ignored target, as F.cross_entropy
    mask = (torch.rand(3, 7, generator=gen) < 0.6).long() if masked else None
    ref = full_lm_loss(hidden, head, targets, mask)
    ref_grads = torch.autograd.grad(ref, (hidden, head.weight))
    out = lm_loss(hidden, head, targets, mask, chunk_rows=chunk_rows)
    grads = torch.autograd.grad(out, (hidden, head.weight))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_chunked_ce_under_bf16_autocast_matches_full() -> None:
    gen = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(32, 50, bias=False)
    hidden = torch.randn(2, 9, 32, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = full_lm_loss(hidden, head, targets, None)
        out = lm_loss(hidden, head, targets, None, chunk_rows=4)
    ref_g = torch.autograd.grad(ref, head.weight)[0]
    g = torch.autograd.grad(out, head.weight)[0]
    assert g.dtype == head.weight.dtype
    torch.testing.assert_close(out, ref, rtol=1e-2, atol=1e-2)
    assert (g - ref_g).norm() / ref_g.norm() < 2e-2


def test_lm_loss_rejects_negative_chunk() -> None:
    head = torch.nn.Linear(4, 5, bias=False)
    with pytest.raises(ValueError, match="chunk_rows"):
        lm_loss(torch.randn(1, 2, 4), head, torch.zeros(1, 2, dtype=torch.long), None, chunk_rows=-1)


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_compile_per_block_does_not_recompile_when_r_changes_or_in_evaluation(autocast: bool) -> None:
    """Every mode a run uses (grad steps, the no-grad iterations, held-out loss at another batch size and
    length) compiles its own graph once: no guard fails, so TORCH_LOGS=recompiles stays silent. Under
    autocast blocks fed fp32 (embeddings, a norm's output) and bf16 (the adapter's) get graphs of their own."""
    torch._dynamo.reset()
    model = compile_model(_tiny(n_layers=4), backend="eager")  # a core of two blocks
    x = torch.randint(0, 97, (2, 16))
    counters.clear()
    with RecompileCounter() as recompiles, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(x, targets=x, num_steps=(1, 2)).loss.backward()  # one graph with grad, one under no_grad
        model.eval()
        with torch.no_grad():
            model(x[:, :8], targets=x[:, :8], num_steps=3)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 3  # train, no-grad, eval (each per input dtype under autocast)
        try:
            with torch._dynamo.config.patch(error_on_recompile=True):
                model.train()
                for steps in [(0, 1), (3, 2), (0, 5), (7, 1)]:
                    model(x, targets=x, num_steps=steps).loss.backward()
                model.eval()
                with torch.no_grad():
                    for rows, length, r in [(3, 12, 1), (5, 16, 8), (4, 9, 64)]:
                        y = torch.randint(0, 97, (rows, length))
                        model(y, targets=y, num_steps=r)
        finally:
            torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] == graphs
    assert recompiles.count == 0  # the first calls too: switching modes or dtypes is no recompile


def test_compiled_equals_eager_for_ten_training_steps() -> None:
    eager, compiled = _tiny(), _tiny()
    compiled.load_state_dict(eager.state_dict())
    compile_model(compiled, backend="aot_eager")  # dynamo + AOT autograd; inductor codegen is checked on GPU
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints unchanged by compile
    optims = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    gen = torch.Generator().manual_seed(3)
    for step in range(10):
        x = torch.randint(0, 97, (2, 16), generator=gen)
        losses = []
        for model, opt in zip((eager, compiled), optims):
            torch.manual_seed(step)  # same initial-state noise in both
            loss = model(x, targets=x, num_steps=(step % 3, 2)).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, abs(losses[0])), (step, losses)


def test_whole_model_compile_equals_eager_in_one_graph_and_evaluation_stays_per_block() -> None:
    """A baseline compiled whole (inductor, as train.py on one device) trains as the eager model for ten
    steps in one graph with no graph break; held-out loss and decoding take the per-block path and leave
    the training graph alone (no recompile). A looped model is never compiled whole (r changes its graph)."""
    torch._dynamo.reset()
    eager, compiled = _tiny("baseline"), _tiny("baseline")
    compile_model(compiled, whole=True)
    assert type(compiled.forward).__name__ == "WholeTrainingForward"
    for variant in ("recurrent", "latent"):  # both take a depth; latent loops without a looped block list
        assert type(compile_model(_tiny(variant), whole=True).forward).__name__ != "WholeTrainingForward"
    optims = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    gen = torch.Generator().manual_seed(3)
    counters.clear()
    with RecompileCounter() as recompiles:
        for step in range(10):
            x = torch.randint(0, 97, (2, 16), generator=gen)
            losses = []
            for model, opt in zip((eager, compiled), optims):
                loss = model(x, targets=x).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
                losses.append(loss.item())
            assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, abs(losses[0])), (step, losses)
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
        compiled.eval()
        with torch.no_grad():
            assert torch.allclose(compiled(x).logits, eager.eval()(x).logits, atol=1e-4)
        compiled.train()
        compiled(x, targets=x).loss.backward()
    torch._dynamo.reset()
    assert recompiles.count == 0


def test_pinned_sdpa_math_equals_default_with_documents() -> None:
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, 12, h, 8, generator=gen) for h in (4, 2, 2))
    doc_ids = torch.tensor([[0] * 5 + [1] * 7, [0] * 12])
    torch.testing.assert_close(attend(q, k, v, doc_ids, backend="math"), attend(q, k, v, doc_ids, backend="sdpa"))


def test_auto_resolves_and_unknown_backend_is_rejected() -> None:
    assert resolve_backend("auto", torch.device("cpu"), True) == "sdpa"
    with pytest.raises(ValueError, match="attn_backend"):
        resolve_backend("flash-attn", torch.device("cpu"), False)


def test_auto_choice_applies_only_to_the_dtype_it_was_measured_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training selects a kernel under bf16 autocast; an fp32 evaluation must not inherit a bf16-only kernel
    (cuDNN attention has no fp32 path: "No available kernel" on the GPU)."""
    from recur.models import attention

    cpu = torch.device("cpu")
    monkeypatch.setitem(attention._auto_choice, ("cpu", True, torch.bfloat16), "cudnn")
    assert resolve_backend("auto", cpu, True, torch.bfloat16) == "cudnn"
    assert resolve_backend("auto", cpu, True, torch.float32) == "sdpa"
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=gen) for _ in range(3))
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(attend(q, k, v, doc_ids), attend(q, k, v, doc_ids, backend="math"))


@pytest.mark.slow  # inductor compiles the flex kernel for the CPU (~30 s)
def test_flex_document_mask_equals_sdpa_on_cpu() -> None:
    gen = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, 64, h, 16, generator=gen) for h in (4, 2, 2))
    doc_ids = torch.tensor([[0] * 20 + [1] * 30 + [2] * 14, [0] * 7 + [1] * 57])
    torch.testing.assert_close(
        attend(q, k, v, doc_ids, backend="flex"), attend(q, k, v, doc_ids, backend="sdpa"), rtol=1e-4, atol=1e-5
    )


def test_flex_document_mask_is_built_once_outside_the_compiled_blocks() -> None:
    """DecoderLM.context builds flex's block mask in eager code, so a compiled block has no graph break, and
    the model's output equals SDPA's."""
    torch._dynamo.reset()
    flex, sdpa = _tiny(attn_backend="flex").eval(), _tiny(attn_backend="sdpa").eval()
    x = torch.randint(0, 97, (2, 16))
    docs = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
    assert flex.context(x, docs, None).block_mask is not None
    assert sdpa.context(x, docs, None).block_mask is None
    compile_model(flex, backend="eager")
    counters.clear()
    try:
        with torch.no_grad():
            out = flex(x, num_steps=3, doc_ids=docs).logits
    finally:
        torch._dynamo.reset()
    assert not counters["graph_break"]
    with torch.no_grad():
        torch.testing.assert_close(out, sdpa(x, num_steps=3, doc_ids=docs).logits, rtol=1e-4, atol=1e-5)


def test_compiled_blocks_keep_activation_checkpointing_hooks_eager() -> None:
    """Only the blocks' forward is compiled: the checkpoint hooks run eagerly around it, so the graphs have
    no breaks, and loss and gradients equal the uncompiled checkpointed model's."""
    from recur.parallel.fsdp import apply_activation_checkpointing

    torch._dynamo.reset()
    eager, compiled = _tiny(), _tiny()
    for model in (eager, compiled):
        apply_activation_checkpointing(model)
    compile_model(compiled, backend="aot_eager")
    x = torch.randint(0, 97, (2, 16))
    counters.clear()
    try:
        results = []
        for model in (eager, compiled):
            torch.manual_seed(0)
            loss = model(x, targets=x, num_steps=(1, 2)).loss
            loss.backward()
            results.append((loss.detach(), [p.grad for p in model.parameters()]))
    finally:
        torch._dynamo.reset()
    assert not counters["graph_break"]
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_no_flex_mask_for_models_whose_blocks_do_not_attend() -> None:
    ssm = create_model(
        ModelConfig.from_dict(
            dict(variant="ssm", vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32, attn_backend="flex")
        )
    )
    x, docs = torch.randint(0, 97, (2, 16)), torch.zeros(2, 16, dtype=torch.long)
    assert ssm.context(x, docs, None).block_mask is None
    flex = _tiny(attn_backend="flex")
    assert flex.context(x, None, None).block_mask is not None  # causal flex: built here too


def test_gpu_compile_modes_check_passes_on_cpu() -> None:
    """bench/gpu_compile_modes.py's check (packed documents, bf16 autocast, training with no-grad
    iterations, held-out losses at other shapes and depths) on the CPU: no recompile, compiled == eager."""
    from bench.gpu_compile_modes import check

    try:
        record = check("sdpa", "cpu", torch.bfloat16, 64)  # inductor, as train.py
    finally:
        torch._dynamo.reset()
    assert record["error"] is None and record["recompiles"] == 0, record
    assert record["max_abs_loss_diff"] < 1e-3, record
