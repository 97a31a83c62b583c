"""`baseline`: a plain Llama-style decoder, the control rung of the ladder."""

from __future__ import annotations

import torch
from torch import nn

from recur.models.config import ModelConfig
from recur.models.layers import AttentionContext, Block
from recur.models.lm import (
    BlockList,
    DecoderLM,
    ModelOutput,
    NoiseKey,
    NumSteps,
    attention_flops_per_layer,
    loop_flop_terms,
)


class BaselineLM(DecoderLM):
    uses_depth = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.init_weights()

    def effective_depth(self) -> int:
        return self.cfg.n_layers

    def block_lists(self) -> list[BlockList]:
        return [BlockList("layers", self.layers, before_head=True)]

    def param_parts(self) -> dict[str, nn.Module | None]:
        return {"layers": self.layers}

    def flop_terms(self, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1) -> dict[str, float]:
        """Every parameter but the embedding lookup applied once, with grad (a tied head still costs its matmul)."""
        head = self.lm_head.weight
        fixed = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("tok_embeddings"))
        fixed += head.numel() if head is self.tok_embeddings.weight else 0
        return loop_flop_terms(
            fixed, 0, self.cfg.n_layers, 0, attention_flops_per_layer(self.cfg, seq_len), no_grad_steps, grad_steps
        )

    def trunk(
        self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, noise: NoiseKey | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        # num_steps is accepted (and ignored) so every variant can be evaluated by the same depth sweep.
        return self.run_blocks(self.layers, x, ctx, "layers"), ModelOutput(stats={"num_steps": 1})
