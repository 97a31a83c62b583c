"""`baseline`: a plain Llama-style decoder, the control rung of the ladder."""

from __future__ import annotations

import torch
from torch import nn

from recur.models.config import ModelConfig
from recur.models.layers import AttentionContext, Block
from recur.models.lm import DecoderLM, ModelOutput, NumSteps


class BaselineLM(DecoderLM):
    uses_depth = False

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.init_weights()

    def effective_depth(self) -> int:
        return self.cfg.n_layers

    def trunk(self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps) -> tuple[torch.Tensor, ModelOutput]:
        # num_steps is accepted (and ignored) so every variant can be evaluated by the same depth sweep.
        return self.run_blocks(self.layers, x, ctx, "layers"), ModelOutput(stats={"num_steps": 1})
