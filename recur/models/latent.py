"""`latent`: a dual stream — Z learned thought tokens iterate K times over the token stream (ReLSM's ThoughtCore).

    h = prelude(embed(x))                                   token stream, `read_layer` blocks
    z_0 = thoughts (learned, [Z, d_thought]) per chunk
    z_i = ThoughtCore(z_{i-1}, h)                           i = 1 .. n + k (first n without grad)
    h = h + inject(mean_Z z_K)                              per chunk, added to that chunk's tokens
    logits = head(norm(coda(h)))                            remaining blocks

Causality. ReLSM's thoughts cross-attend to the whole sequence, so the injected vector of position t
carries tokens > t: fine for classification, a leak for a language model. Here the sequence is cut into
chunks of `thought_chunk` positions; chunk c owns its own Z thoughts, which read only positions
<= c·C (the chunk's first token), and its injection is added to positions c·C .. c·C + C - 1, all of
which are >= c·C. Thoughts therefore lag at most C - 1 tokens; the coda blocks' causal self-attention
supplies the rest of the chunk. thought_chunk = 1 gives exact per-position thoughts (cost Z·T thought
tokens); the default 16 with Z = 16 costs T thought tokens, about one extra layer per iteration.
With packed documents a chunk reads only its first token's document, and tokens of another document
inside that chunk receive no injection.

Generation with a KV cache is exact: the cache keeps the thoughts' keys/values of every position, and a
forward recomputes the thoughts of the chunks it touches (for one new token: one chunk, Z thoughts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recur.models.config import LatentConfig, ModelConfig
from recur.models.layers import AttentionContext, Block, RMSNorm
from recur.models.lm import (
    BlockList,
    DecoderLM,
    ModelOutput,
    NoiseKey,
    NumSteps,
    attention_flops_per_layer,
    param_count,
)
from recur.models.looped import split_steps


def ffn_width(d: int, multiple_of: int) -> int:
    return -(-int(8 * d / 3) // multiple_of) * multiple_of


class ThoughtMLP(nn.Module):
    """SwiGLU at the thought width (same parameter names as the token stream's)."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d, hidden, bias=False)
        self.w3 = nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ChunkAttention(nn.Module):
    """Multi-head attention from groups of query slots (one group per chunk) to a key stream.

    `self_attend`: the slots of one group attend to each other (no mask: they share one causal prefix).
    Otherwise the slots attend to precomputed keys/values [B, S, H, D] under a boolean mask [B, U, S].
    """

    def __init__(self, d_query: int, d_key: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_query // n_heads
        self.wq = nn.Linear(d_query, d_query, bias=False)
        self.wk = nn.Linear(d_key, d_query, bias=False)
        self.wv = nn.Linear(d_key, d_query, bias=False)
        self.wo = nn.Linear(d_query, d_query, bias=False)

    def keys(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, S, _ = h.shape
        return (self.wk(h).view(B, S, self.n_heads, self.head_dim), self.wv(h).view(B, S, self.n_heads, self.head_dim))

    def self_attend(self, z: torch.Tensor) -> torch.Tensor:
        B, U, Z, d = z.shape
        q = self.wq(z).view(B * U, Z, self.n_heads, self.head_dim).transpose(1, 2)
        k, v = (t.view(B * U, Z, self.n_heads, self.head_dim).transpose(1, 2) for t in self.keys(z.view(B * U, Z, d)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.wo(out.transpose(1, 2).reshape(B, U, Z, d))

    def cross_attend(self, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z: [B, U, Q, d]; k, v: [B, S, H, D]; mask [B|1, U, S] (True = may attend; every group must be
        allowed at least one key, else softmax has no support). Returns [B, U, Q, d]."""
        B, U, Q, d = z.shape
        q = self.wq(z).view(B, U * Q, self.n_heads, self.head_dim).transpose(1, 2)
        full = mask[:, :, None, :].expand(mask.shape[0], U, Q, mask.shape[-1]).reshape(mask.shape[0], 1, U * Q, -1)
        out = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=full)
        return self.wo(out.transpose(1, 2).reshape(B, U, Q, d))


class ThoughtCore(nn.Module):
    """One thought iteration, pre-norm: self-attention among a chunk's thoughts, cross-attention to the
    token stream (its causal prefix), SwiGLU. ReLSM's core has no self-attention; without it the Z
    thoughts would be Z independent queries rather than a scratchpad that can combine what each read."""

    def __init__(self, d_thought: int, d_model: int, n_heads: int, hidden: int, eps: float):
        super().__init__()
        self.self_norm = RMSNorm(d_thought, eps)
        self.self_attn = ChunkAttention(d_thought, d_thought, n_heads)
        self.cross_norm = RMSNorm(d_thought, eps)
        self.cross_attn = ChunkAttention(d_thought, d_model, n_heads)
        self.mlp_norm = RMSNorm(d_thought, eps)
        self.mlp = ThoughtMLP(d_thought, hidden)

    def forward(self, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = z + self.self_attn.self_attend(self.self_norm(z))
        z = z + self.cross_attn.cross_attend(self.cross_norm(z), k, v, mask)
        return z + self.mlp(self.mlp_norm(z))


@dataclass
class ChunkLayout:
    """Which chunks a forward over positions [start, start + T) touches, and who may read what."""

    first_chunk: int
    unit_of_position: torch.Tensor  # [T] index (0 .. U-1) of each new position's chunk
    read_mask: torch.Tensor  # [B|1, U, S] chunk u may read key position s
    inject_mask: torch.Tensor  # [B|1, T, 1] position receives its chunk's injection (same document)

    @property
    def num_units(self) -> int:
        return self.read_mask.shape[1]


def chunk_layout(
    start: int, T: int, S: int, chunk: int, doc_ids: torch.Tensor | None, device: torch.device
) -> ChunkLayout:
    """Chunk c reads key positions <= c·chunk (its first token) of that token's document."""
    positions = torch.arange(start, start + T, device=device)
    first, last = start // chunk, (start + T - 1) // chunk
    heads = torch.arange(first, last + 1, device=device) * chunk  # first position of each chunk
    read = (torch.arange(S, device=device)[None, :] <= heads[:, None])[None]
    unit = positions // chunk - first
    if doc_ids is None:
        return ChunkLayout(first, unit, read, torch.ones(1, T, 1, dtype=torch.bool, device=device))
    if doc_ids.shape[1] != S:
        raise ValueError(f"doc_ids cover {doc_ids.shape[1]} positions, expected all {S} (cached + new)")
    head_docs = doc_ids[:, heads]  # [B, U]
    read = read & (doc_ids[:, None, :] == head_docs[:, :, None])
    inject = doc_ids[:, start:] == head_docs[:, unit]
    return ChunkLayout(first, unit, read, inject[..., None])


class ThoughtStream(nn.Module):
    """The thought tokens, their core and the injection back into the token stream."""

    def __init__(self, cfg: ModelConfig, settings: LatentConfig):
        super().__init__()
        self.settings = settings
        d_t = settings.d_thought
        self.thoughts = nn.Parameter(torch.empty(settings.n_thoughts, d_t))
        self.read_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.core = ThoughtCore(
            d_t, cfg.d_model, settings.thought_heads, ffn_width(d_t, cfg.ffn_multiple_of), cfg.norm_eps
        )
        self.out_norm = RMSNorm(d_t, cfg.norm_eps)
        self.inject = nn.Linear(d_t, cfg.d_model, bias=False)

    def read_keys(self, h: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of every position so far: this forward's, appended to the cache when there is one."""
        k, v = self.core.cross_attn.keys(self.read_norm(h))
        if ctx.cache is not None:
            k, v = ctx.cache.kv_slot(("thoughts",), k, *k.shape[2:]).write(k, v, ctx.positions)
            k, v = k[:, : ctx.cache.end], v[:, : ctx.cache.end]  # eager code: the filled part is all it reads
        return k, v

    def initial(self, batch: int, units: int) -> torch.Tensor:
        return self.thoughts[None, None].expand(batch, units, -1, -1)

    def iterate(
        self, h: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, default_steps: int
    ) -> tuple[torch.Tensor, ChunkLayout, dict, torch.Tensor | None]:
        """Run the thought loop; returns the final thoughts [B, U, Z, d_t], the layout, stats and aux loss."""
        no_grad_steps, grad_steps = split_steps(num_steps, default_steps)
        k, v = self.read_keys(h, ctx)
        layout = chunk_layout(ctx.start_pos, h.shape[1], k.shape[1], self.settings.thought_chunk, ctx.doc_ids, h.device)
        z = self.initial(h.shape[0], layout.num_units)
        with torch.no_grad():
            for _ in range(no_grad_steps):
                z = self.core(z, k, v, layout.read_mask)
        for _ in range(grad_steps):
            z = self.core(z, k, v, layout.read_mask)
        return z, layout, {"num_steps": no_grad_steps + grad_steps}, None

    def forward(
        self, h: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, default_steps: int
    ) -> tuple[torch.Tensor, ModelOutput]:
        z, layout, stats, aux = self.iterate(h, ctx, num_steps, default_steps)
        per_unit = self.inject(self.out_norm(z.mean(dim=2)))  # [B, U, d_model]
        added = per_unit[:, layout.unit_of_position] * layout.inject_mask.to(per_unit.dtype)
        return h + added, ModelOutput(aux_loss=aux, stats=stats)


class LatentLM(DecoderLM):
    """Token blocks split around a thought stream. Subclasses change the token block (SSM) or the
    stream (halting) through `make_block` / `make_stream`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.settings = cfg.latent  # resolved: every derived knob is filled in
        split = self.settings.read_layer
        self.prelude = nn.ModuleList(self.make_block(cfg) for _ in range(split))
        self.thought_stream = self.make_stream(cfg)
        self.coda = nn.ModuleList(self.make_block(cfg) for _ in range(cfg.n_layers - split))
        self.init_weights()
        nn.init.normal_(self.thought_stream.thoughts, std=cfg.init_std)
        self.after_init()

    def make_block(self, cfg: ModelConfig) -> nn.Module:
        return Block(cfg)

    def make_stream(self, cfg: ModelConfig) -> ThoughtStream:
        return ThoughtStream(cfg, self.settings)

    def after_init(self) -> None:
        """Hook for initialisations that differ from init_weights (e.g. the halting bias)."""

    def effective_depth(self) -> int:
        return self.cfg.n_layers

    def mix_tokens(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Between the prelude and the thoughts; the memory hybrid adds its memory here."""
        return h

    def mix_tokens_params(self) -> float:
        """Parameters mix_tokens applies per token (flop_terms); none without memory."""
        return 0

    def block_lists(self) -> list[BlockList]:
        return [BlockList("prelude", self.prelude), BlockList("coda", self.coda, before_head=True)]

    def param_parts(self) -> dict[str, nn.Module | None]:
        return {"prelude": self.prelude, "coda": self.coda, "thought_stream": self.thought_stream}

    def flop_terms(self, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1) -> dict[str, float]:
        """Token blocks and memory once per token; the thought core runs on n_thoughts / thought_chunk thought
        tokens per token and iteration (act: its maximum K, an upper bound). The cross-attention keys are
        projected once per token; each thought attends to at most seq_len keys."""
        stream, settings = self.thought_stream, self.settings
        core = stream.core
        keys = param_count(core.cross_attn.wk) + param_count(core.cross_attn.wv)
        per_thought = param_count(core) - keys
        per_token = sum(param_count(block) for block in (*self.prelude, *self.coda))
        n_blocks = len(self.prelude) + len(self.coda) if self.token_attention else 0
        per_token += keys + param_count(stream.inject) + self.lm_head.weight.numel()
        per_token += self.mix_tokens_params()
        ratio = settings.n_thoughts / settings.thought_chunk
        thought_attn = 4 * (seq_len + settings.n_thoughts) * settings.d_thought * ratio
        loop = ratio * per_thought
        return {
            "n1": per_token + loop * grad_steps,
            "n2": loop * no_grad_steps,
            "attention": 3 * attention_flops_per_layer(self.cfg, seq_len) * n_blocks
            + thought_attn * (3 * grad_steps + no_grad_steps),
        }

    def trunk(
        self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, noise: NoiseKey | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        h = self.run_blocks(self.prelude, x, ctx, "prelude")
        h = self.mix_tokens(h, ctx)
        h, out = self.thought_stream(h, ctx, num_steps, self.cfg.default_num_steps)
        return self.run_blocks(self.coda, h, ctx, "coda"), out
