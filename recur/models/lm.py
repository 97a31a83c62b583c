"""Shared scaffolding of every language model: embeddings, rotary tables, final norm, head and loss.

A variant implements `trunk()`, the map from embedded tokens to final hidden states; the loss, caching
and positions are handled here once. It also states what the code outside recur/models needs to know
about it, so that nothing there guesses from attribute names (the model contract):
    block_lists()   its ModuleLists of decoder blocks (FSDP units, activation checkpointing, compile);
    param_parts()   its named components (parameter reports, recur.flops.count_params);
    flop_terms()    its per-token training cost at a recurrence (n, k) (recur.flops, MFU);
    supports_adaptive_exit   whether it has `decode_step_with_exit` (generation with an exit rule).
Training passes the random initial state's key as `forward(..., noise=NoiseKey)`; variants without a
random state ignore it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from recur.models.attention import BlockMask, flex_block_mask, resolve_backend
from recur.models.config import ModelConfig
from recur.models.layers import AttentionContext, KVCache, RMSNorm, Rotary
from recur.models.loss import lm_loss

NumSteps = int | tuple[int, int] | None  # r, or (steps without grad, steps with grad)


@dataclass(frozen=True)
class NoiseKey:
    """Keys the random initial state of training row by row: row i of a batch draws from a generator
    seeded by (seed, first_row + i). The trainer passes seed = f(run seed, step) and the batch's first
    row in the global batch, so a row's noise is the same whatever the world size, micro-batching or
    resume point, and no global RNG state is consumed."""

    seed: int
    first_row: int

    def draw(self, like: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(like.shape[0]):
            generator = torch.Generator(like.device).manual_seed(((self.seed << 24) + self.first_row + i) % 2**63)
            rows.append(torch.randn(like.shape[1:], generator=generator, device=like.device))
        return torch.stack(rows).to(like.dtype)


@dataclass(frozen=True)
class BlockList:
    """One ModuleList of decoder blocks, with what the parallel wrappers need to know about its use."""

    name: str
    blocks: nn.ModuleList
    # Applied several times per forward (a recurrent core): FSDP keeps it gathered through the loop.
    looped: bool = False
    # Its last block feeds the final norm and head, which live in the root unit: no re-gather follows.
    before_head: bool = False


def param_count(module: nn.Module | None) -> int:
    """Parameters of `module` (0 for an absent optional component, e.g. no adapter)."""
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def attention_flops_per_layer(cfg: ModelConfig, seq_len: int) -> int:
    """Forward attention FLOPs per token of one layer application: QKᵀ and AV over seq_len keys (no causal
    discount, as nanoGPT/PaLM)."""
    return 4 * seq_len * (cfg.n_heads * cfg.head_dim)


def loop_flop_terms(
    fixed: int,
    loop: int,
    fixed_layers: int,
    loop_layers: int,
    attn_per_layer: int,
    no_grad_steps: float,
    grad_steps: float,
) -> dict[str, float]:
    """The flop_terms of a model whose `fixed` parameters (and `fixed_layers` attention layers) run once
    with grad and whose `loop` parameters (`loop_layers` layers) run n times without grad, then k with."""
    return {
        "n1": fixed + loop * grad_steps,
        "n2": loop * no_grad_steps,
        "attention": attn_per_layer * (3 * (fixed_layers + loop_layers * grad_steps) + loop_layers * no_grad_steps),
    }


@dataclass
class ModelOutput:
    logits: torch.Tensor | None = None  # [B, T, V]; None when targets were given (only the loss is needed)
    loss: torch.Tensor | None = None  # mean cross-entropy over target tokens with loss_mask = 1
    aux_loss: torch.Tensor | None = None  # variant-specific regulariser already weighted (e.g. ACT ponder cost)
    stats: dict = field(default_factory=dict)  # e.g. {"num_steps": 8}, {"mean_steps_used": 3.2}


class DecoderLM(nn.Module):
    # Whether `num_steps` changes the computation (recurrence steps or thought iterations); False only for
    # the baseline, which evaluation then runs once instead of at every depth.
    uses_depth = True
    # Whether the model decodes with a per-token exit rule (`decode_step_with_exit`); looped models only.
    supports_adaptive_exit = False
    # Whether the token blocks attend (Block); the SSM variants' blocks mix by a scan and cost no attention.
    token_attention = True

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

    def trunk(
        self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, noise: NoiseKey | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        raise NotImplementedError

    def block_lists(self) -> list[BlockList]:
        """The decoder blocks, one entry per ModuleList: each block is one FSDP unit, one activation
        checkpoint and one compiled graph (the root unit keeps embeddings, norms, head and the rest)."""
        raise NotImplementedError

    def param_parts(self) -> dict[str, nn.Module | None]:
        """The trunk's components by name, for parameter reports (embeddings, final norm and head are
        reported by count_params itself); None stands for an absent optional component."""
        raise NotImplementedError

    def flop_terms(self, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1) -> dict[str, float]:
        """Per-token pieces of the training cost of one step running n = no_grad_steps iterations without
        grad and k = grad_steps with: {"n1": params applied with grad, "n2": params applied without,
        "attention": attention FLOPs}. n and k may be expectations (floats). See recur/flops.py."""
        raise NotImplementedError

    def effective_depth(self) -> int:
        """Layers a token passes through at the default recurrence (used to scale the init)."""
        raise NotImplementedError

    def init_weights(self) -> None:
        """Normal(0, init_std) everywhere; residual output projections scaled by 1/sqrt(2·depth) (GPT-2)."""
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * max(1, self.effective_depth()))
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_out = name.endswith(("attn.wo", "mlp.w2"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_out else std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        loss_mask: torch.Tensor | None = None,
        num_steps: NumSteps = None,
        doc_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        noise: NoiseKey | None = None,
    ) -> ModelOutput:
        """`noise` keys the random initial state in training mode (see NoiseKey); without it the state
        is drawn from the global RNG."""
        ctx = self.context(input_ids, doc_ids, cache)
        hidden, out = self.trunk(self.tok_embeddings(input_ids), ctx, num_steps, noise)
        hidden = self.norm(hidden)
        if cache is not None:
            cache.advance()
        if targets is not None:
            out.loss = lm_loss(hidden, self.lm_head, targets, loss_mask)
        else:
            out.logits = self.lm_head(hidden)
        return out

    def context(self, input_ids: torch.Tensor, doc_ids: torch.Tensor | None, cache: KVCache | None) -> AttentionContext:
        """Rotary tables and, when decoding with a cache, the positions to write and the cache's mask; all
        built here, outside the compiled blocks, so these see only tensors of fixed shapes."""
        T = input_ids.shape[1]
        start = cache.seen_tokens if cache is not None else 0
        if start + T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {start + T} tokens exceeds --model.max_seq_len {self.cfg.max_seq_len}")
        positions = torch.arange(start, start + T, device=input_ids.device)
        cos, sin = self.rotary(positions)
        ctx = AttentionContext(cos=cos, sin=sin, doc_ids=doc_ids, cache=cache, start_pos=start)
        if cache is None and self.token_attention:
            ctx.block_mask = self.block_mask(doc_ids, T, input_ids.device)
        if cache is not None:
            cache.begin(T, self.cfg.max_seq_len)
            ctx.positions, ctx.cache_mask = positions, cache.attention_mask(positions, doc_ids)
        return ctx

    def block_mask(self, doc_ids: torch.Tensor | None, T: int, device: torch.device) -> BlockMask | None:
        """Flex's mask for this forward when attention resolves to flex here (in the dtype it will run in),
        built once for every layer and recurrence step, in eager code: a compiled block then has no graph
        break. None for the other backends."""
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        backend = resolve_backend(
            self.cfg.attn_backend, device, doc_ids is not None, dtype or self.tok_embeddings.weight.dtype
        )
        if backend != "flex":
            return None
        return flex_block_mask(doc_ids, T, T, device)

    @torch.no_grad()
    def decode_step(
        self, input_ids: torch.Tensor, cache: KVCache, num_steps: NumSteps = None, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token logits [B, V] after `input_ids` [B, T] (the prompt, then one generated token at a
        time), continuing `cache`; doc_ids cover the cached and the new positions."""
        return self(input_ids, num_steps=num_steps, doc_ids=doc_ids, cache=cache).logits[:, -1]

    def run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor, ctx: AttentionContext, tag: object) -> torch.Tensor:
        """Apply blocks in order; `tag` names this application so a KV cache keeps one slot per use. The slot
        is looked up here, in eager code: a compiled block only receives it, so its guards never see the cache."""
        for i, block in enumerate(blocks):
            if ctx.cache is not None:
                ctx.slot = block.cache_slot(ctx.cache, (tag, i), x)
            x = block(x, ctx)
        return x
