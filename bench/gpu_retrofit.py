"""Retrofit benchmark: convert a Llama-3.2-1B-shaped random-init Llama into a 4-8-4 recurrent model and train
it for 50 steps with the recurrence curriculum in bf16 on synthetic tokens.

    python bench/gpu_retrofit.py                      # on an H100: the 1B shape
    python bench/gpu_retrofit.py --shape tiny --device cpu --steps 6   # smoke test anywhere

Steps: build the HF model in-process (weights rounded to bf16 so the saved bf16 checkpoint is exact), save it,
convert it with recur.convert.hf (the real path: config.json + safetensors from disk), check the converted
model's logits equal HF's at r = 1 (fp32, TF32 off), then train. Prints the equivalence error, tokens/s
(steps after the first `--warmup` excluded from timing), model FLOPs utilisation and peak memory, and one
JSON line with all numbers for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from recur.convert.hf import convert_hf_model
from recur.flops import count_params, flops_per_token
from recur.metrics import device_peak_tflops
from recur.optim import build_optimizer, lr_at, set_lr
from recur.optim.config import LRScheduleConfig, OptimConfig
from recur.recurrence import RecurrenceConfig, RecurrenceSampler

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
SHAPES = {
    # Llama-3.2-1B: 16 layers, d 2048, 32 heads / 8 kv heads, SwiGLU 8192, vocab 128256, tied, llama3 RoPE.
    "1b": dict(
        hidden_size=2048,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        intermediate_size=8192,
        vocab_size=128256,
        max_position_embeddings=131072,
    ),
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=256,
        vocab_size=512,
        max_position_embeddings=16384,
    ),
}


def build_source(shape: str, path: Path, device: torch.device) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**SHAPES[shape], tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.bfloat16().float())
    model.to(torch.bfloat16).save_pretrained(str(path))
    return model.float().eval()


@torch.no_grad()
def equivalence_error(hf, ours, vocab: int, seq_len: int, device: torch.device) -> float:
    torch.backends.cuda.matmul.allow_tf32 = False
    ids = torch.randint(0, vocab, (1, min(128, seq_len)), device=device)
    diff = (hf(ids, use_cache=False).logits - ours.eval()(ids, num_steps=1).logits).abs().max().item()
    torch.backends.cuda.matmul.allow_tf32 = True
    return diff


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5, help="untimed first steps (allocator, kernels)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seq_len", type=int, default=1024)
    p.add_argument("--mean_recurrence", type=int, default=4)
    p.add_argument("--backprop_depth", type=int, default=8)
    p.add_argument("--optim", choices=["adamw", "muon"], default="adamw")
    p.add_argument("--split", default="4,4,8,4", help="prelude_size,start_index,block_size,coda_size")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_retrofit: --device cuda but CUDA is not available (use --device cpu --shape tiny)", file=sys.stderr)
        return 2
    split = [int(x) for x in args.split.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        hf = build_source(args.shape, Path(tmp) / "source", device)
        model = convert_hf_model(Path(tmp) / "source", *split, arch="llama", max_seq_len=args.seq_len)
        convert_s = time.perf_counter() - began
        model.to(device)
        # The r = 1 check needs every layer kept (prelude directly followed by the block, then the coda).
        keeps_all = split[1] == split[0] and split[0] + split[2] + split[3] == SHAPES[args.shape]["num_hidden_layers"]
        err = (
            equivalence_error(hf, model, SHAPES[args.shape]["vocab_size"], args.seq_len, device) if keeps_all else None
        )
        del hf
    print(f"[convert] {convert_s:.1f}s; r=1 max |logit diff| vs HF: {err}", file=sys.stderr)

    cfg = model.cfg
    params = count_params(model)
    optim_cfg = OptimConfig(name=args.optim, schedule=LRScheduleConfig(name="constant", lr=5e-5, warmup_steps=5))
    optimizer = build_optimizer(model, optim_cfg)
    sampler = RecurrenceSampler(
        RecurrenceConfig(
            mean_recurrence=args.mean_recurrence,
            backprop_depth=args.backprop_depth,
            mean_schedule="linear",
            mean_warmup=0.5,
        ),
        args.steps,
    )
    gen = torch.Generator(device="cpu").manual_seed(0)
    tokens_per_step = args.batch_size * args.seq_len
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    timed_tokens, timed_s, timed_flops, losses = 0, 0.0, 0.0, []
    for step in range(args.steps):
        ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=gen).to(device)
        depth = sampler(step)
        set_lr(optimizer, lr_at(step, optim_cfg.schedule, args.steps))
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = model(ids[:, :-1], targets=ids[:, 1:], num_steps=(depth.no_grad_steps, depth.grad_steps))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(out.loss.item())
        if step >= args.warmup:
            timed_tokens += tokens_per_step
            timed_s += dt
            timed_flops += (
                flops_per_token(model, cfg, args.seq_len, depth.no_grad_steps, depth.grad_steps) * tokens_per_step
            )
        if step % 10 == 0 or step == args.steps - 1:
            print(
                f"[train] step {step:3d} r={depth.total:2d} k={depth.grad_steps} loss {losses[-1]:.3f} "
                f"{tokens_per_step / dt:,.0f} tok/s",
                file=sys.stderr,
            )

    peak_tflops = device_peak_tflops(device, None)
    result = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "split": split,
        "params": params["total"],
        "optim": args.optim,
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "mean_recurrence": args.mean_recurrence,
        "backprop_depth": args.backprop_depth,
        "convert_s": round(convert_s, 1),
        "r1_max_logit_diff": err,
        "tokens_per_s": timed_tokens / timed_s if timed_s else None,
        "model_tflops_per_s": timed_flops / timed_s / 1e12 if timed_s else None,
        "mfu": timed_flops / timed_s / (peak_tflops * 1e12) if timed_s and peak_tflops else None,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
