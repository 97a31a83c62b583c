"""GPU check of recur's Mamba2Mixer against mamba-ssm's Mamba2 (numerics and fwd+bwd speed, same run).

What it does (CUDA only; installs nothing):
  1. Builds ``mamba_ssm.Mamba2(..., use_mem_eff_path=False)`` and two copies of our ``Mamba2Mixer`` with
     the reference's weights loaded strictly (so parameter names/shapes must match): one on
     mamba-ssm's Triton scan (``backend="mamba_ssm"``), one on the pure-PyTorch scan (``backend="torch"``).
  2. bf16, full size: max abs / relative diff of outputs, input grads and parameter grads vs the reference.
  3. bf16, full size: forward+backward time of all three, and our/ref ratios. (The first Triton call
     autotunes for minutes; that happens in the warm-up, outside the timed loop.)
  4. fp32, smaller size: the same diffs, a tighter check of the math (done last so a slow autotune
     cannot cost the bf16 results).
  First (alone with ``--packed-only``): packed rows (``doc_ids``), bf16, our layer on mamba-ssm's scan
  (``seq_idx``) vs on ours.
Exit code: 0 all diffs within tolerance, 1 a diff over tolerance, 2 no CUDA or mamba-ssm not importable.

Run on the GPU machine from the repository root (the wheel comes from the git-ignored ``wheels/``,
built on a CPU machine with ``MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE pip wheel --no-deps
--no-build-isolation -w wheels mamba-ssm==2.3.2.post1``):

    python -m pip install --no-deps wheels/mamba_ssm-2.3.2.post1-py3-none-any.whl && python bench/gpu_ssm_check.py

(with the device tool: ``carry=["wheels"]``). Options: ``--d-model --batch --seqlen --d-state --headdim
--chunk-size --iters --warmup``; defaults are d_model 1024, batch 8 x 2048 tokens, d_state 128, chunk 256.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import Tensor, nn

# Run as a plain script from any directory: make the repository's package importable.
from recur.models.ssm import Mamba2Mixer, try_import_mamba2

# Normwise relative tolerances (max |ours - ref| / max |ref|). bf16 outputs carry ~3 significant digits;
# fp32 Triton dots may run in TF32.
_TOL = {torch.bfloat16: 3e-2, torch.float32: 5e-3}
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seqlen", type=int, default=2048)
    p.add_argument("--d-state", type=int, default=128)
    p.add_argument("--headdim", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--packed-only", action="store_true", help="only the packed-documents check (one autotune)")
    return p.parse_args()


def build_layers(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, nn.Module]:
    from mamba_ssm.modules.mamba2 import Mamba2

    torch.manual_seed(0)
    shape = dict(
        d_model=args.d_model,
        d_state=args.d_state,
        headdim=args.headdim,
        expand=2,
        ngroups=1,
        chunk_size=args.chunk_size,
    )
    ref = Mamba2(**shape, use_mem_eff_path=False).cuda()
    layers: dict[str, nn.Module] = {"mamba_ssm.Mamba2": ref}
    for backend in ("mamba_ssm", "torch"):
        ours = Mamba2Mixer(**shape, backend=backend).cuda()
        ours.load_state_dict(ref.state_dict(), strict=True)
        layers[f"ours[{backend}]"] = ours
    return {name: layer.to(dtype) for name, layer in layers.items()}


def fwd_bwd(layer: nn.Module, u: Tensor, grad_out: Tensor, **kwargs) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    layer.zero_grad(set_to_none=True)
    u = u.detach().requires_grad_(True)
    out = layer(u, **kwargs)
    out.backward(grad_out)
    return out.detach(), u.grad, {n: p.grad for n, p in layer.named_parameters()}


def rel_diff(a: Tensor, b: Tensor) -> tuple[float, float]:
    """(max abs diff, max abs diff / max abs of b)."""
    err = (a.float() - b.float()).abs().max().item()
    return err, err / max(b.float().abs().max().item(), 1e-30)


def compare(args: argparse.Namespace, dtype: torch.dtype, batch: int, seqlen: int) -> bool:
    """Print diffs of each of our layers vs the reference; True when all are within tolerance."""
    layers = build_layers(args, dtype)
    g = torch.Generator(device="cuda").manual_seed(1)
    u = torch.randn(batch, seqlen, args.d_model, device="cuda", generator=g).to(dtype)
    grad_out = torch.randn(batch, seqlen, args.d_model, device="cuda", generator=g).to(dtype)
    names = list(layers)
    results = {}
    for name in names:
        log(f"{dtype} {batch}x{seqlen}: forward+backward of {name}")
        results[name] = fwd_bwd(layers[name], u, grad_out)
    return all([report(name, results[name], results[names[0]], _TOL[dtype]) for name in names[1:]])


def compare_packed(args: argparse.Namespace, dtype: torch.dtype, batch: int, seqlen: int) -> bool:
    """Packed rows (mamba-ssm's Mamba2 has no seq_idx path without causal_conv1d): our layer on its Triton
    scan (seq_idx) against our own scan, documents of random lengths (~8 per row)."""
    layers = build_layers(args, dtype)
    g = torch.Generator(device="cuda").manual_seed(2)
    u = torch.randn(batch, seqlen, args.d_model, device="cuda", generator=g).to(dtype)
    grad_out = torch.randn(batch, seqlen, args.d_model, device="cuda", generator=g).to(dtype)
    starts = torch.rand(batch, seqlen, device="cuda", generator=g) < 8 / seqlen
    starts[:, 0] = True
    doc_ids = starts.cumsum(1) - 1
    log(f"{dtype} {batch}x{seqlen}: packed documents, ours[mamba_ssm] vs ours[torch]")
    packed = {name: fwd_bwd(layers[name], u, grad_out, doc_ids=doc_ids) for name in ("ours[mamba_ssm]", "ours[torch]")}
    return report("packed docs", packed["ours[mamba_ssm]"], packed["ours[torch]"], _TOL[dtype])


def report(name: str, result: tuple, ref: tuple, tol: float) -> bool:
    """Print output / input-grad / parameter-grad diffs of `result` vs `ref`; True when all are within tol."""
    (out, du, dp), (ref_out, ref_du, ref_dp) = result, ref
    rows = [("output", *rel_diff(out, ref_out)), ("grad input", *rel_diff(du, ref_du))]
    rows += [(f"grad {p}", *rel_diff(dp[p], ref_dp[p])) for p in ref_dp]
    ok = True
    for what, abs_err, rel in rows:
        verdict = "OK" if rel <= tol else "MISMATCH"
        ok &= rel <= tol
        print(f"  {name:>16} vs ref  {what:<22} max abs {abs_err:.3e}  rel {rel:.3e}  {verdict} (tol {tol:g})")
    return ok


def time_fwd_bwd(layer: nn.Module, u: Tensor, grad_out: Tensor, warmup: int, iters: int) -> tuple[float, float]:
    """(ms per forward+backward, peak GiB allocated during the timed loop)."""
    for _ in range(warmup):
        fwd_bwd(layer, u, grad_out)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fwd_bwd(layer, u, grad_out)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters, torch.cuda.max_memory_allocated() / 2**30


def benchmark(args: argparse.Namespace) -> None:
    layers = build_layers(args, torch.bfloat16)
    u = torch.randn(args.batch, args.seqlen, args.d_model, device="cuda", dtype=torch.bfloat16)
    grad_out = torch.randn_like(u)
    timings = {}
    for name, layer in layers.items():
        log(f"timing {name} (warm-up {args.warmup}, then {args.iters} iterations)")
        timings[name] = time_fwd_bwd(layer, u, grad_out, args.warmup, args.iters)
    ref_ms = timings["mamba_ssm.Mamba2"][0]
    print(
        f"fwd+bwd, bf16, d_model {args.d_model}, batch {args.batch} x {args.seqlen}, d_state {args.d_state}, "
        f"headdim {args.headdim}, chunk {args.chunk_size}, {torch.cuda.get_device_name()}:"
    )
    for name, (ms, gib) in timings.items():
        print(f"  {name:>16}: {ms:8.2f} ms   peak {gib:6.2f} GiB   ratio vs ref {ms / ref_ms:5.2f}x")


def main() -> int:
    args = parse_args()
    if not torch.cuda.is_available():
        print("gpu_ssm_check: no CUDA device; run this on the GPU machine.", file=sys.stderr)
        return 2
    if try_import_mamba2() is None:
        print(
            "gpu_ssm_check: mamba_ssm is not importable; first run "
            "`python -m pip install --no-deps wheels/mamba_ssm-2.3.2.post1-py3-none-any.whl` (needs triton, einops).",
            file=sys.stderr,
        )
        return 2
    log(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("== bf16 numerics, packed documents", flush=True)
    ok = compare_packed(args, torch.bfloat16, args.batch, args.seqlen)
    if not args.packed_only:
        print("== bf16 numerics (full size)", flush=True)
        ok &= compare(args, torch.bfloat16, args.batch, args.seqlen)
        print("== bf16 speed", flush=True)
        benchmark(args)
        print("== fp32 numerics (batch 2 x 512)", flush=True)
        ok &= compare(args, torch.float32, 2, min(512, args.seqlen))
    print("RESULT:", "all diffs within tolerance" if ok else "some diffs over tolerance (see MISMATCH lines)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
