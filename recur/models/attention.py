"""Attention kernels behind one function, so the model code never branches on the backend.

Backends:
- `sdpa`: `F.scaled_dot_product_attention`, PyTorch picks the kernel.
- `cudnn` / `flash` / `efficient` / `math`: SDPA pinned to one kernel with `torch.nn.attention.sdpa_kernel`.
- `flex`: `flex_attention` with a block mask built from doc_ids (causal, within a document), so packed
  documents skip the masked blocks instead of computing them under a dense [T, T] mask.
- `auto`: the backend `select_backend()` measured fastest (and correct) on this device type and dtype;
  otherwise (no selection, or another dtype: a pinned kernel such as cuDNN has no fp32 path) it is `sdpa`,
  or `flex` on CUDA when documents are masked (a dense mask at 16k tokens is O(T²) memory).
flash-attn / flash-attn-4 are not backends: their CUDA builds are not installable on the lent machines.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

SDPA_KERNELS = {
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
BACKENDS = ("auto", "sdpa", "flex", *SDPA_KERNELS)

# Chosen by select_backend(), per (device type, whether documents are masked, dtype).
_auto_choice: dict[tuple[str, bool, torch.dtype], str] = {}


def _mask(q_len: int, k_len: int, doc_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean [B or 1, 1, q_len, k_len] mask: causal (queries are the last q_len positions) and, when
    doc_ids is given, restricted to the query's own document (packed rows hold several documents)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    mask = torch.arange(k_len, device=device)[None, :] <= q_pos[:, None]
    if doc_ids is None:
        return mask[None, None]
    same_doc = doc_ids[:, -q_len:, None] == doc_ids[:, None, :]
    return (mask[None] & same_doc)[:, None]


def _causal_mod(offset: int) -> Callable:
    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    return causal


def _document_mod(doc_ids: torch.Tensor, offset: int) -> Callable:
    def document(b, h, q_idx, kv_idx):
        return (q_idx + offset >= kv_idx) & (doc_ids[b, q_idx + offset] == doc_ids[b, kv_idx])

    return document


@lru_cache(maxsize=16)
def causal_block_mask(q_len: int, k_len: int, device: torch.device) -> BlockMask:
    return create_block_mask(_causal_mod(k_len - q_len), None, None, q_len, k_len, device=device)


# The document mask depends on tensor values, so it is built outside any compiled graph: DecoderLM.context
# builds it once per forward, in eager code, and hands it to every layer and recurrence step; a direct call
# of attend without one builds it here (a graph break when compiled) and reuses it while the same doc_ids
# tensor is passed.
_doc_mask_cache: list = [None, None, None]  # [doc_ids tensor, q_len, BlockMask]


@torch.compiler.disable
def document_block_mask(doc_ids: torch.Tensor, q_len: int) -> BlockMask:
    """Block mask for causal attention within documents; doc_ids: [B, S], queries are the last q_len."""
    cached_ids, cached_len, cached_mask = _doc_mask_cache
    if cached_ids is doc_ids and cached_len == q_len:
        return cached_mask
    k_len = doc_ids.shape[1]
    block_mask = create_block_mask(
        _document_mod(doc_ids, k_len - q_len),
        doc_ids.shape[0],
        None,
        q_len,
        k_len,
        device=doc_ids.device,
        _compile=doc_ids.is_cuda,
    )
    _doc_mask_cache[:] = [doc_ids, q_len, block_mask]
    return block_mask


def flex_block_mask(doc_ids: torch.Tensor | None, q_len: int, k_len: int, device: torch.device) -> BlockMask:
    """Flex's mask: causal, and within documents when doc_ids [B, k_len] is given (queries are the last q_len)."""
    return causal_block_mask(q_len, k_len, device) if doc_ids is None else document_block_mask(doc_ids, q_len)


@lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    # Eager flex_attention materialises the scores; the compiled one is the fused kernel.
    return torch.compile(flex_attention, dynamic=False)


def _flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor | None,
    gqa: bool,
    block_mask: BlockMask | None,
) -> torch.Tensor:
    q_len, k_len = q.shape[2], k.shape[2]
    if block_mask is None:
        block_mask = flex_block_mask(doc_ids, q_len, k_len, q.device)
    fn = flex_attention if torch.compiler.is_compiling() else _compiled_flex()
    return fn(q, k, v, block_mask=block_mask, enable_gqa=gqa)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None, gqa: bool) -> torch.Tensor:
    q_len, k_len = q.shape[2], k.shape[2]
    if doc_ids is None and q_len == k_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if doc_ids is None and q_len == 1:
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)  # one new token sees the whole cache
    return F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(q_len, k_len, doc_ids, q.device), enable_gqa=gqa)


def resolve_backend(backend: str, device: torch.device, doc_masking: bool, dtype: torch.dtype = torch.bfloat16) -> str:
    """The concrete backend `backend` means for inputs of `dtype` on this device (only `auto` changes)."""
    if backend not in BACKENDS:
        raise ValueError(f"--model.attn_backend: unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    default = "flex" if device.type == "cuda" and doc_masking else "sdpa"
    return _auto_choice.get((device.type, doc_masking, dtype), default)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    backend: str = "auto",
    block_mask: BlockMask | None = None,
) -> torch.Tensor:
    """Causal grouped-query attention. q: [B, T, H, D]; k, v: [B, S, KV, D] with S >= T (a KV cache holds
    the first S - T positions); doc_ids: [B, S] or None. Returns [B, T, H, D]. `block_mask`, flex's mask of
    these doc_ids built beforehand (document_block_mask), spares a compiled caller the graph break of
    building it here."""
    backend = resolve_backend(backend, q.device, doc_ids is not None, q.dtype)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if backend == "flex":
        out = _flex(q, k, v, doc_ids, gqa, block_mask)
    elif backend == "sdpa":
        out = _sdpa(q, k, v, doc_ids, gqa)
    else:
        with sdpa_kernel(SDPA_KERNELS[backend]):
            out = _sdpa(q, k, v, doc_ids, gqa)
    return out.transpose(1, 2)


def attend_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of new queries q [B, T, H, D] over a preallocated KV cache k, v [B, capacity, KV, D] under
    `mask` [B|1, 1, T, capacity] (see KVCache.attention_mask). Plain SDPA whatever the backend: a dense mask
    over a fixed-size cache is what keeps decoding shapes static, and flash/flex take no such mask."""
    k, v = k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=q.shape[2] != k.shape[1])
    return out.transpose(1, 2)


def _time_fwd_bwd(fn: Callable[[], torch.Tensor], iters: int) -> float:
    """Median seconds of one forward + backward."""
    times = []
    for _ in range(iters + 2):  # two warm-up calls (compilation, autotuning)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        began = time.perf_counter()
        fn().sum().backward()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - began)
    return sorted(times[2:])[len(times[2:]) // 2]


def benchmark_backends(
    device: torch.device,
    batch: int,
    seq_len: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    doc_masking: bool,
    dtype: torch.dtype = torch.bfloat16,
    iters: int = 5,
    candidates: tuple[str, ...] | None = None,
) -> dict[str, dict]:
    """Time and check each backend on one attention shape: {name: {"seconds", "max_err", "error"}}.
    The reference is the math kernel in fp32 on the same inputs; a backend that raises (unsupported
    shape, dtype or device) is reported with its error instead of a time."""
    gen = torch.Generator(device).manual_seed(0)
    q = torch.randn(batch, seq_len, n_heads, head_dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(batch, seq_len, n_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(batch, seq_len, n_kv_heads, head_dim, device=device, dtype=dtype, generator=gen)
    doc_ids = None
    if doc_masking:  # documents of random lengths, about 8 per row
        starts = torch.rand(batch, seq_len, device=device, generator=gen) < 8 / seq_len
        starts[:, 0] = True
        doc_ids = starts.cumsum(1) - 1
    ref = attend(q.float(), k.float(), v.float(), doc_ids, backend="math")
    results: dict[str, dict] = {}
    for name in candidates or tuple(b for b in BACKENDS if b not in ("auto", "math")):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        # A refused kernel raises (recorded below) after PyTorch warns why; the warnings would only repeat it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = attend(*leaves, doc_ids=doc_ids, backend=name)
                err = ((out.float() - ref).norm() / ref.norm()).item()
                seconds = _time_fwd_bwd(
                    lambda leaves=leaves, name=name: attend(*leaves, doc_ids=doc_ids, backend=name), iters
                )
                results[name] = {"seconds": seconds, "max_err": err, "error": None}
            except (RuntimeError, NotImplementedError, ValueError) as exc:  # kernel not available for this case
                results[name] = {"seconds": None, "max_err": None, "error": str(exc).splitlines()[0][:160]}
    return results


def select_backend(
    device: torch.device,
    batch: int,
    seq_len: int,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    doc_masking: bool,
    dtype: torch.dtype = torch.bfloat16,
    tolerance: float = 2e-2,
) -> tuple[str, dict]:
    """Measure the backends on this shape, make the fastest one within `tolerance` (relative error vs the
    fp32 math kernel) what `auto` means on this device type for `dtype`, and return (name, measurements)."""
    results = benchmark_backends(device, batch, seq_len, n_heads, n_kv_heads, head_dim, doc_masking, dtype)
    correct = {n: r for n, r in results.items() if r["seconds"] is not None and r["max_err"] <= tolerance}
    if not correct:
        raise RuntimeError(f"no attention backend ran correctly on {device}: {results}")
    best = min(correct, key=lambda n: correct[n]["seconds"])
    _auto_choice[(device.type, doc_masking, dtype)] = best
    return best, results
