"""Compiled decoding on the GPU: the trainer's --compile (per-block torch.compile, inductor) running greedy
generation with the preallocated KV cache. Checks the compiled tokens equal eager ones at several depths
and with adaptive exit, counts dynamo graphs and recompiles, and times decoding eager vs compiled.

    python bench/gpu_decode_compile.py                  # H200: a small recurrent model in bf16
    python bench/gpu_decode_compile.py --device cpu --d_model 64 --tokens 8   # smoke test anywhere

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from bench.perf_common import RecompileCounter
from recur.eval.generate import ExitRule, generate
from recur.models import ModelConfig, create_model
from recur.parallel.compile import compile_model


def decode(
    model, prompts: list[list[int]], tokens: int, depth: int, rule: ExitRule | None = None
) -> tuple[list, float]:
    """(generated tokens, seconds) of one greedy generation."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    out = generate(model, prompts, tokens, set(), num_steps=depth, exit_rule=rule).tokens
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda")
    p.add_argument("--variant", default="recurrent")
    p.add_argument("--d_model", type=int, default=512)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(
        variant=args.variant,
        vocab_size=512,
        d_model=args.d_model,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        max_seq_len=256,
        init_std=0.1,
    )
    model = create_model(cfg).to(args.device, getattr(torch, args.dtype)).eval()
    prompts = torch.randint(8, 512, (args.batch, 16), generator=torch.Generator().manual_seed(1)).tolist()
    runs = [(4, None), (8, None), (6, None), (8, ExitRule("kl", 1e-3))]
    eager = [decode(model, prompts, args.tokens, r, rule) for r, rule in runs]
    compile_model(model)
    torch._dynamo.reset()
    counters.clear()
    with RecompileCounter() as recompiles:
        compiled = [decode(model, prompts, args.tokens, r, rule) for r, rule in runs]
        warm = decode(model, prompts, args.tokens, 8)  # every graph exists by now
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
        "variant": args.variant,
        "dtype": args.dtype,
        "batch": args.batch,
        "tokens": args.tokens,
        "tokens_equal": [e[0] == c[0] for e, c in zip(eager, compiled)],
        "unique_graphs": counters["stats"]["unique_graphs"],
        "recompiles": recompiles.count,
        "eager_s": [round(e[1], 3) for e in eager],
        "compiled_s": [round(c[1], 3) for c in compiled],
        "compiled_warm_r8_s": round(warm[1], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
