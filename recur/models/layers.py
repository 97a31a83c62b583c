"""Llama-style building blocks: RMSNorm, RoPE, grouped-query attention, SwiGLU, decoder block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from recur.models.attention import attend, attend_cached
from recur.models.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 for bf16 stability, as Llama does.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


def rope_frequencies(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with optional Llama-3 long-context scaling."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        inv_freq = torch.where(medium, smoothed, scaled)
    elif kind == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif kind != "default":
        raise ValueError(f"--model.rope_scaling: unsupported rope_type '{kind}'; expected default, linear or llama3")
    return inv_freq.float()


class Rotary(nn.Module):
    """Precomputed cos/sin tables (HF "rotate half" convention, so HF weights load unchanged)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(cfg), persistent=False)
        self.max_seq_len = cfg.max_seq_len

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, T, H, D]; cos/sin: [T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos[None, :, None, :].to(x.dtype), sin[None, :, None, :].to(x.dtype)
    return x * cos + rotated * sin


@dataclass
class AttentionContext:
    """Everything attention needs besides the hidden states, shared by all layers of one forward."""

    cos: torch.Tensor
    sin: torch.Tensor
    doc_ids: torch.Tensor | None = None  # [B, T] document index per token: attention stays within a document
    cache: KVCache | None = None
    start_pos: int = 0
    positions: torch.Tensor | None = None  # [T] positions this forward writes into the cache
    cache_mask: torch.Tensor | None = None  # [B|1, 1, T, capacity] which cache positions each query may see
    slot: KVSlot | StateSlot | None = None  # the running block's own cache entry, set by run_blocks
    block_mask: BlockMask | None = None  # flex's document mask of doc_ids, built once per forward in eager code


@dataclass
class KVSlot:
    """Preallocated keys/values [B, capacity, heads, head_dim] of one layer application. Written in place
    at the forward's positions, so inside a compiled block the shapes never change from token to token."""

    k: torch.Tensor
    v: torch.Tensor
    filled: int = 0  # positions written so far (bookkeeping outside the compiled blocks)

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k.index_copy_(1, positions, k.to(self.k.dtype))
        self.v.index_copy_(1, positions, v.to(self.v.dtype))
        return self.k, self.v

    def resize(self, capacity: int) -> None:
        grown = [t.new_zeros(t.shape[0], capacity, *t.shape[2:]) for t in (self.k, self.v)]
        for new, old in zip(grown, (self.k, self.v)):
            new[:, : old.shape[1]] = old
        self.k, self.v = grown


@dataclass
class StateSlot:
    """A recurrent layer's carried state (e.g. Mamba's conv and SSM states); None before the prompt."""

    state: tuple[torch.Tensor, ...] | None = None


class KVCache:
    """Cache of one decoding run, one slot per layer application. A looped model keys slots by (recurrence
    step, layer), so each step keeps its own cache: exact for any depth, since step i at position t sees
    only the step-i keys of earlier positions, exactly as in an uncached forward.

    Key/value slots are preallocated for `capacity` positions and attention masks the unwritten tail, so
    a compiled block sees the same shapes at every decoding step and its guards never depend on how many
    slots exist or how many tokens are cached (see recur/parallel/compile.py). Without a capacity, the
    first forward sets it and a longer sequence doubles it (up to max_seq_len): a few shapes, not one per
    token."""

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self.kv: dict[object, KVSlot] = {}
        self.states: dict[object, StateSlot] = {}
        self.seen_tokens = 0  # positions already cached; the next forward starts here
        self.end = 0  # positions cached once the running forward completes

    def begin(self, new_tokens: int, limit: int) -> None:
        """Make room for a forward over `new_tokens` positions after the cached ones."""
        self.end = self.seen_tokens + new_tokens
        if self.capacity is None or self.end > self.capacity:
            self.capacity = min(limit, max(self.end, 2 * (self.capacity or 0)))
            for slot in self.kv.values():
                slot.resize(self.capacity)

    def kv_slot(self, key: object, like: torch.Tensor, heads: int, head_dim: int) -> KVSlot:
        """The slot `key`, allocated on first use for the batch and dtype of `like`; it will hold this forward."""
        slot = self.kv.get(key)
        if slot is None:
            shape = (like.shape[0], self.capacity, heads, head_dim)
            slot = self.kv[key] = KVSlot(like.new_zeros(shape), like.new_zeros(shape))
        if slot.filled < self.seen_tokens:  # a gap would be attended to as zero keys
            raise RuntimeError(f"KV cache slot {key} holds {slot.filled} of {self.seen_tokens} cached positions")
        slot.filled = self.end
        return slot

    def state_slot(self, key: object) -> StateSlot:
        return self.states.setdefault(key, StateSlot())

    def attention_mask(self, positions: torch.Tensor, doc_ids: torch.Tensor | None) -> torch.Tensor:
        """[B|1, 1, T, capacity]: causal over the cache (the unwritten tail lies after every query) and,
        with doc_ids [B, cached + new], within the query's document."""
        keys = torch.arange(self.capacity, device=positions.device)
        mask = keys[None, :] <= positions[:, None]
        if doc_ids is None:
            return mask[None, None]
        docs = F.pad(doc_ids, (0, self.capacity - doc_ids.shape[1]), value=-1)
        same_doc = doc_ids[:, positions, None] == docs[:, None, :]
        return (mask[None] & same_doc)[:, None]

    def advance(self) -> None:
        self.seen_tokens = self.end


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.backend = cfg.attn_backend
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(cfg.n_heads * cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.n_kv_heads * cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.wq(x), self.wk(x), self.wv(x)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rotary(q.view(B, T, self.n_heads, self.head_dim), ctx.cos, ctx.sin)
        k = apply_rotary(k.view(B, T, self.n_kv_heads, self.head_dim), ctx.cos, ctx.sin)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if ctx.slot is not None:  # decoding: attend over the whole preallocated cache under its mask
            k, v = ctx.slot.write(k, v, ctx.positions)
            out = attend_cached(q, k, v, ctx.cache_mask)
        else:
            out = attend(q, k, v, doc_ids=ctx.doc_ids, backend=self.backend, block_mask=ctx.block_mask)
        return self.wo(out.reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Decoder block, by `block_norm`:
    `pre`      x + f(norm(x))          (Llama)
    `post`     x + norm(f(x))          (OLMo-2)
    `sandwich` norm(x + f(norm(x)))    (Huginn) — the residual stream itself is renormalised after every
               sublayer, so a block's output has RMS set by the norm weights whatever its input: iterating
               it any number of times cannot grow the state (pre-norm's residual grows with every pass)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.block_norm
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        if self.kind == "sandwich":
            self.attn_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp_out_norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def cache_slot(self, cache: KVCache, key: object, x: torch.Tensor) -> KVSlot:
        return cache.kv_slot(key, x, self.attn.n_kv_heads, self.attn.head_dim)

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        if self.kind == "post":
            x = x + self.dropout(self.attn_norm(self.attn(x, ctx)))
            return x + self.dropout(self.mlp_norm(self.mlp(x)))
        if self.kind == "sandwich":
            x = self.attn_out_norm(x + self.dropout(self.attn(self.attn_norm(x), ctx)))
            return self.mlp_out_norm(x + self.dropout(self.mlp(self.mlp_norm(x))))
        x = x + self.dropout(self.attn(self.attn_norm(x), ctx))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))
