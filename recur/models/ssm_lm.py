"""`ssm` and `ssm_mem`: a Mamba-2 token stream with the latent thought loop on top.

`ssm`: every token block is RMSNorm + Mamba2Mixer (recur/models/ssm.py) + RMSNorm + SwiGLU; the thought
stream of latent.py reads the stream after `read_layer` blocks and is injected there.

`ssm_mem` adds attention-based memory between the prelude and the thoughts, so a token can retrieve
content an SSM state may have forgotten: per chunk of `memory_chunk` positions, M learned memory slots
are *written* by one ThoughtCore pass (self-attention among slots, cross-attention to the causal prefix
<= the chunk's first position, SwiGLU), and every token *reads* its own chunk's slots by cross-attention
(residual). The causal argument is the one of latent.py: slots of chunk c only see positions <= c·C.
The thoughts then read the memory-enriched token stream.

Caches: a Mamba block keeps (conv_state, ssm_state) in its KVCache state slot and steps one
token at a time after the prompt; memory keys/values are cached like the thoughts'. Packed rows: the
Mamba mixer restarts its state and conv window at each document start (doc_ids), as the attention parts,
memory and thoughts do.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from recur.models.config import ModelConfig, SSMConfig
from recur.models.latent import ChunkAttention, LatentLM, ThoughtCore, chunk_layout, ffn_width
from recur.models.layers import AttentionContext, KVCache, RMSNorm, StateSlot, SwiGLU
from recur.models.lm import param_count
from recur.models.ssm import Mamba2Mixer


class SSMBlock(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)). With a cache it continues from the stored SSM state."""

    def __init__(self, cfg: ModelConfig, ssm: SSMConfig):
        super().__init__()
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(
            cfg.d_model,
            d_state=ssm.d_state,
            headdim=ssm.headdim,
            expand=ssm.expand,
            d_conv=ssm.d_conv,
            chunk_size=ssm.scan_chunk,
            norm_eps=cfg.norm_eps,
        )
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = SwiGLU(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def cache_slot(self, cache: KVCache, key: object, x: torch.Tensor) -> StateSlot:
        return cache.state_slot(key)

    def mix(self, u: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        slot = ctx.slot
        if slot is None:
            return self.mixer(u, doc_ids=ctx.doc_ids)
        if slot.state is None:  # the prompt: one parallel scan that also returns the final state
            y, state = self.mixer(u, return_state=True, doc_ids=ctx.doc_ids)
        else:  # continuation: the recurrence, token by token, from the stored state
            state, outputs = slot.state, []
            for t in range(u.shape[1]):
                y_t, *state = self.mixer.step(u[:, t], *state)
                outputs.append(y_t)
            y = torch.stack(outputs, dim=1)
        # Contiguous: the scan and the step return states of different strides, which compiled blocks guard on.
        slot.state = tuple(t.contiguous() for t in state)
        return y

    def forward(self, x: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        x = x + self.dropout(self.mix(self.mixer_norm(x), ctx))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class SSMLM(LatentLM):
    token_attention = False

    def make_block(self, cfg: ModelConfig) -> nn.Module:
        return SSMBlock(cfg, cfg.ssm)

    @torch.no_grad()
    def after_init(self) -> None:
        # init_weights scales residual outputs named attn.wo / mlp.w2; the mixer's out_proj is one too.
        out_std = self.cfg.init_std / math.sqrt(2 * max(1, self.effective_depth()))
        for block in (*self.prelude, *self.coda):
            nn.init.normal_(block.mixer.out_proj.weight, std=out_std)


class Memory(nn.Module):
    """M memory slots per chunk, written from the causal prefix and read back by the chunk's tokens."""

    def __init__(self, cfg: ModelConfig, n_slots: int, chunk: int):
        super().__init__()
        self.chunk = chunk
        self.slots = nn.Parameter(torch.empty(n_slots, cfg.d_model))
        self.write_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.write = ThoughtCore(
            cfg.d_model, cfg.d_model, cfg.n_heads, ffn_width(cfg.d_model, cfg.ffn_multiple_of), cfg.norm_eps
        )
        self.read_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.read = ChunkAttention(cfg.d_model, cfg.d_model, cfg.n_heads)

    def forward(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        B, T, d = h.shape
        k, v = self.write.cross_attn.keys(self.write_norm(h))
        if ctx.cache is not None:
            k, v = ctx.cache.kv_slot(("memory",), k, *k.shape[2:]).write(k, v, ctx.positions)
            k, v = k[:, : ctx.cache.end], v[:, : ctx.cache.end]  # eager code: the filled part is all it reads
        layout = chunk_layout(ctx.start_pos, T, k.shape[1], self.chunk, ctx.doc_ids, h.device)
        memory = self.write(self.slots[None, None].expand(B, layout.num_units, -1, -1), k, v, layout.read_mask)
        # Token t reads the slots of its own chunk: tokens are groups of one query over U·M slots.
        n_slots = self.slots.shape[0]
        slot_unit = torch.arange(layout.num_units, device=h.device).repeat_interleave(n_slots)
        own = (layout.unit_of_position[:, None] == slot_unit[None, :])[None]  # [1, T, U·M]
        mk, mv = self.read.keys(memory.reshape(B, -1, d))
        read = self.read.cross_attend(self.read_norm(h)[:, :, None, :], mk, mv, own).squeeze(2)
        # A token of another document than its chunk's first token must not read that chunk's memory.
        return h + read * layout.inject_mask.to(read.dtype)


class SSMMemLM(SSMLM):
    def make_stream(self, cfg: ModelConfig):
        # Built right before the thought stream so parameter order reads prelude, memory, thoughts, coda.
        self.memory = Memory(cfg, cfg.memory.n_slots, cfg.memory.chunk)
        return super().make_stream(cfg)

    @torch.no_grad()
    def after_init(self) -> None:
        super().after_init()
        nn.init.normal_(self.memory.slots, std=self.cfg.init_std)

    def mix_tokens(self, h: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        return self.memory(h, ctx)

    def mix_tokens_params(self) -> float:
        """Memory reads once per token; writes on n_memory / memory_chunk slots per token."""
        memory = self.memory
        write_keys = param_count(memory.write.cross_attn.wk) + param_count(memory.write.cross_attn.wv)
        slots_per_token = memory.slots.shape[0] / memory.chunk
        return param_count(memory.read) + write_keys + slots_per_token * (param_count(memory.write) - write_keys)

    def param_parts(self) -> dict[str, nn.Module | None]:
        return {
            "prelude": self.prelude,
            "coda": self.coda,
            "memory": self.memory,
            "thought_stream": self.thought_stream,
        }
