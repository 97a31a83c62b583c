"""`act`: the latent thought stream with adaptive halting (Graves' ACT), one halting decision per chunk unit.

Each unit (one sample's chunk of thoughts, see latent.py) gets a halting probability per iteration from
a head on its thoughts' mean: p_i = sigmoid(halt(mean_Z z_i)). Unit u halts at the first N with
p_1 + ... + p_N >= threshold (or at N = max steps); its output is the ACT mixture
    z_out = sum_{i<N} p_i z_i + R z_N,     R = 1 - sum_{i<N} p_i,
so the graph is exact when units halt at different steps (later iterations get weight 0 and no gradient),
and the ponder cost N + R (its gradient flows through R) is added as lambda_ponder · mean(N + R).
ReLSM accumulates cum + (1 - cum)·p instead; the Graves form gives the remainder its gradient.

Per-sample compute: an iteration runs only on the batch rows with a unit still thinking, so in
generation (one unit per row) a halted sample costs nothing while the rest finish.
num_steps = (n, k) sets the maximum K = n + k (first n iterations without grad); default max_steps.
"""

from __future__ import annotations

import torch
from torch import nn

from recur.models.config import ActConfig, LatentConfig, ModelConfig
from recur.models.latent import ChunkLayout, LatentLM, ThoughtStream, chunk_layout
from recur.models.layers import AttentionContext
from recur.models.lm import NumSteps
from recur.models.looped import split_steps


class HaltingThoughtStream(ThoughtStream):
    def __init__(self, cfg: ModelConfig, settings: LatentConfig, halting: ActConfig):
        super().__init__(cfg, settings)
        self.halting = halting
        self.halt = nn.Linear(settings.d_thought, 1, bias=True)

    def step_active_rows(
        self, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: ChunkLayout, halted: torch.Tensor
    ) -> torch.Tensor:
        """One core iteration on the rows that still have a thinking unit; other rows keep their state."""
        rows = (~halted).any(dim=1)
        if bool(rows.all()):
            return self.core(z, k, v, layout.read_mask)
        index = rows.nonzero().squeeze(1)
        mask = layout.read_mask if layout.read_mask.shape[0] == 1 else layout.read_mask[index]
        return z.index_copy(0, index, self.core(z[index], k[index], v[index], mask))

    def iterate(
        self, h: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, default_steps: int
    ) -> tuple[torch.Tensor, ChunkLayout, dict, torch.Tensor | None]:
        cfg = self.halting
        no_grad_steps, grad_steps = split_steps(num_steps, cfg.max_steps)
        max_steps = no_grad_steps + grad_steps
        min_steps = min(cfg.min_steps, max_steps)
        k, v = self.read_keys(h, ctx)
        layout = chunk_layout(ctx.start_pos, h.shape[1], k.shape[1], self.settings.thought_chunk, ctx.doc_ids, h.device)
        z = self.initial(h.shape[0], layout.num_units)
        units = z.shape[:2]
        cum = torch.zeros(units, device=h.device)  # sum of p over iterations that did not halt
        halted = torch.zeros(units, dtype=torch.bool, device=h.device)
        steps_used = torch.zeros(units, device=h.device)
        remainder = torch.zeros(units, device=h.device)
        mixture = torch.zeros_like(z)
        grad_enabled = torch.is_grad_enabled()
        for step in range(max_steps):
            with torch.set_grad_enabled(grad_enabled and step >= no_grad_steps):
                z = self.step_active_rows(z, k, v, layout, halted)
                p = torch.sigmoid(self.halt(z.mean(dim=2)).squeeze(-1).float())
                may_halt = step + 1 >= min_steps
                if not may_halt:  # weight 0 before min_steps keeps the mixture weights summing to 1
                    p = torch.zeros_like(p)
                thinking = ~halted
                finishing = thinking & (((cum + p >= cfg.threshold) & may_halt) | (step + 1 == max_steps))
                weight = torch.where(finishing, 1.0 - cum, torch.where(thinking, p, torch.zeros_like(p)))
                mixture = mixture + weight[..., None, None].to(z.dtype) * z
                remainder = torch.where(finishing, 1.0 - cum, remainder)
                steps_used = steps_used + thinking.float()
                cum = cum + torch.where(thinking & ~finishing, p, torch.zeros_like(p))
                halted = halted | finishing
            if bool(halted.all()):
                break
        ponder = cfg.lambda_ponder * (steps_used + remainder).mean()
        stats = {"num_steps": max_steps, "mean_steps_used": steps_used.mean().item()}
        return mixture, layout, stats, ponder


class ActLM(LatentLM):
    def make_stream(self, cfg: ModelConfig) -> ThoughtStream:
        return HaltingThoughtStream(cfg, self.settings, cfg.act)

    @torch.no_grad()
    def after_init(self) -> None:
        self.thought_stream.halt.bias.fill_(self.thought_stream.halting.halt_bias)
