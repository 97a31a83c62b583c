"""The per-mode compile entry points on the GPU (recur/parallel/compile.py, inductor): training steps whose
sampled r includes no-grad iterations, then held-out losses at other batch sizes, lengths and depths, all with
documents packed in the rows (the flex or SDPA document mask). Every call after the first of its mode runs
under error_on_recompile; the compiled losses must equal eager ones.

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

from recur.models import ModelConfig, create_model
from recur.parallel.compile import compile_model

TRAIN_STEPS = [(1, 2), (0, 3), (3, 1), (2, 2), (0, 1), (5, 3)]  # (no-grad, grad) iterations
EVAL_SHAPES = [(8, 256, 1), (4, 200, 4), (16, 128, 32), (6, 96, 8)]  # rows, length, depth


def packed_doc_ids(rows: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Document index per token: each row holds a few documents of random lengths."""
    cuts = torch.rand(rows, length, generator=gen) < 4 / length
    cuts[:, 0] = False
    return cuts.cumsum(1)


def batch(rows: int, length: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 512, (rows, length), generator=gen)
    return tokens.to(device), packed_doc_ids(rows, length, gen).to(device)


def losses(model, device: str, dtype: torch.dtype, strict_after_first: bool) -> tuple[list[float], float]:
    """Training losses over TRAIN_STEPS, then held-out losses over EVAL_SHAPES; (losses, seconds)."""
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
    for i, (rows, length, depth) in enumerate(EVAL_SHAPES):
        x, docs = batch(rows, length, 100 + i, device)
        with torch.no_grad(), torch.autocast(device, dtype=dtype), strict(i == 0):
            out.append(model(x, targets=x, num_steps=depth, doc_ids=docs).loss.item())
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--d_model", type=int, default=256)
    p.add_argument("--backends", nargs="+", default=["flex", "sdpa"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    for backend in args.backends:
        torch.manual_seed(0)
        cfg = ModelConfig(
            variant="recurrent",
            vocab_size=512,
            d_model=args.d_model,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            max_seq_len=256,
            attn_backend=backend,
        )
        model = create_model(cfg).to(args.device)
        eager, eager_s = losses(model, args.device, dtype, strict_after_first=False)
        torch._dynamo.reset()
        counters.clear()
        compile_model(model)
        error = None
        try:
            compiled, compiled_s = losses(model, args.device, dtype, strict_after_first=True)
        except Exception as exc:  # report the failure (a recompile or a compile error) in the JSON line
            compiled, compiled_s, error = [], 0.0, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        print(
            json.dumps(
                {
                    "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
                    "torch": torch.__version__,
                    "backend": backend,
                    "error": error,
                    "max_abs_loss_diff": max((abs(a - b) for a, b in zip(eager, compiled)), default=None),
                    "eager": [round(v, 5) for v in eager],
                    "compiled": [round(v, 5) for v in compiled],
                    "unique_graphs": counters["stats"]["unique_graphs"],
                    "recompiles": sum(counters["recompiles"].values()),
                    "eager_s": round(eager_s, 2),
                    "compiled_s_with_compile": round(compiled_s, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
