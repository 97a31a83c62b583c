"""The per-mode compile entry points on the GPU (recur/parallel/compile.py, inductor): training steps whose
sampled r includes no-grad iterations, then held-out losses at other batch sizes, lengths and depths, all with
documents packed in the rows (the flex or SDPA document mask). Every call after the first of its mode runs
under error_on_recompile (flex evaluation compiles one static graph per shape; its other depths must not
recompile); the compiled losses must equal eager ones. `error` names the first failure, else null.

    python bench/gpu_compile_modes.py                     # one GPU, bf16, flex and sdpa
    python bench/gpu_compile_modes.py --device cpu --dtype float32 --backends sdpa --d_model 64   # anywhere

Prints one JSON line per attention backend.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from bench.perf_common import RecompileCounter
from recur.models import ModelConfig, create_model
from recur.parallel.compile import compile_model

TRAIN_STEPS = [(1, 2), (0, 3), (3, 1), (2, 2), (0, 1), (5, 3)]  # (no-grad, grad) iterations
EVAL_SHAPES = [(8, 256), (4, 200), (16, 128), (6, 96)]  # rows, length
EVAL_DEPTHS = (1, 8, 32)


def packed_doc_ids(rows: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Document index per token: each row holds a few documents of random lengths."""
    cuts = torch.rand(rows, length, generator=gen) < 4 / length
    cuts[:, 0] = False
    return cuts.cumsum(1)


def batch(rows: int, length: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 512, (rows, length), generator=gen)
    return tokens.to(device), packed_doc_ids(rows, length, gen).to(device)


def losses(
    model, device: str, dtype: torch.dtype, strict_after_first: bool, static_eval: bool
) -> tuple[list[float], float]:
    """Training losses over TRAIN_STEPS, then held-out losses over EVAL_SHAPES x EVAL_DEPTHS; (losses,
    seconds). `static_eval`: evaluation compiles each shape on its own (flex), so only its other depths
    must not recompile."""
    began, out = time.perf_counter(), []

    def strict(first_of_mode: bool):
        no_recompile = strict_after_first and not first_of_mode
        return torch._dynamo.config.patch(error_on_recompile=True) if no_recompile else contextlib.nullcontext()

    model.train()
    for i, steps in enumerate(TRAIN_STEPS):
        x, docs = batch(8, 256, i, device)
        torch.manual_seed(i)  # the same initial-state noise in both runs
        with torch.autocast(device, dtype=dtype), strict(i < 2):  # steps 0, 1: the grad and no-grad graphs
            loss = model(x, targets=x, num_steps=steps, doc_ids=docs).loss
            loss.backward()
        out.append(loss.item())
    model.zero_grad(set_to_none=True)
    model.eval()
    for i, (rows, length) in enumerate(EVAL_SHAPES):
        x, docs = batch(rows, length, 100 + i, device)
        for j, depth in enumerate(EVAL_DEPTHS):
            first = j == 0 and (i == 0 or static_eval)
            with torch.no_grad(), torch.autocast(device, dtype=dtype), strict(first):
                out.append(model(x, targets=x, num_steps=depth, doc_ids=docs).loss.item())
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def check(attention: str, device: str, dtype: torch.dtype, d_model: int, **compile_kwargs) -> dict:
    """Eager, then compiled, losses of one freshly built model; the JSON record of the comparison."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        variant="recurrent",
        vocab_size=512,
        d_model=d_model,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=256,
        attn_backend=attention,
    )
    model = create_model(cfg).to(device)
    static_eval = attention == "flex"  # see recur/parallel/compile.py
    eager, eager_s = losses(model, device, dtype, strict_after_first=False, static_eval=static_eval)
    torch._dynamo.reset()
    counters.clear()
    compile_model(model, **compile_kwargs)
    error = None
    with RecompileCounter() as recompiles:
        try:
            compiled, compiled_s = losses(model, device, dtype, True, static_eval)
        except Exception as exc:  # report the failure (a recompile or a compile error) in the record
            compiled, compiled_s, error = [], 0.0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__,
        "backend": attention,
        "error": error,
        "max_abs_loss_diff": max((abs(a - b) for a, b in zip(eager, compiled)), default=None),
        "eager": [round(v, 5) for v in eager],
        "compiled": [round(v, 5) for v in compiled],
        "unique_graphs": counters["stats"]["unique_graphs"],
        "recompiles": recompiles.count,  # flex: one per eval shape after the first
        "eager_s": round(eager_s, 2),
        "compiled_s_with_compile": round(compiled_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--backends", nargs="+", default=["flex", "sdpa"])
    args = p.parse_args()
    for backend in args.backends:
        print(json.dumps(check(backend, args.device, getattr(torch, args.dtype), args.d_model)), flush=True)


if __name__ == "__main__":
    main()
