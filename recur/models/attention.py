"""Attention kernels behind one function, so the model code never branches on the backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "sdpa")


def _mask(q_len: int, k_len: int, doc_ids: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    """Boolean [B or 1, 1, q_len, k_len] mask: causal (queries are the last q_len positions) and, when
    doc_ids is given, restricted to the query's own document (packed rows hold several documents)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device)
    mask = torch.arange(k_len, device=device)[None, :] <= q_pos[:, None]
    if doc_ids is None:
        return mask[None, None]
    same_doc = doc_ids[:, -q_len:, None] == doc_ids[:, None, :]
    return (mask[None] & same_doc)[:, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, doc_ids: torch.Tensor | None = None,
           backend: str = "auto") -> torch.Tensor:
    """Causal grouped-query attention. q: [B, T, H, D]; k, v: [B, S, KV, D] with S >= T (a KV cache holds
    the first S - T positions); doc_ids: [B, S] or None. Returns [B, T, H, D]."""
    if backend not in BACKENDS:
        raise ValueError(f"--model.attn_backend: unknown backend '{backend}'; expected one of {', '.join(BACKENDS)}")
    q_len, k_len = q.shape[1], k.shape[1]
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if doc_ids is None and q_len == k_len:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif doc_ids is None and q_len == 1:
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)  # one new token sees the whole cache
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_mask(q_len, k_len, doc_ids, q.device),
                                             enable_gqa=gqa)
    return out.transpose(1, 2)
