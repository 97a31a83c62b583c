"""Looped models: `recurrent` (prelude / recurrent core / coda, Huginn-style) and `shared_loop`.

    e = prelude(embed(x));  s_0 = init(e)
    s_i = core(inject(s_{i-1}, e))        for i = 1 .. n + k
    logits = head(norm(coda(s_{n+k})))

The first n iterations run without autograd and only the last k build a graph (truncated backprop), so
activation memory grows with k, not with the total depth r = n + k. `shared_loop` is the special case
without prelude and coda whose state starts as the embeddings and is iterated without injection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recur.models.config import ModelConfig
from recur.models.layers import AttentionContext, Block, KVCache, RMSNorm
from recur.models.lm import (
    BlockList,
    DecoderLM,
    ModelOutput,
    NoiseKey,
    NumSteps,
    attention_flops_per_layer,
    loop_flop_terms,
    param_count,
)


def split_steps(num_steps: NumSteps, default: int) -> tuple[int, int]:
    """Normalise num_steps to (steps without grad, steps with grad)."""
    if num_steps is None:
        num_steps = default
    no_grad_steps, grad_steps = (0, num_steps) if isinstance(num_steps, int) else num_steps
    if no_grad_steps < 0 or grad_steps < 0 or no_grad_steps + grad_steps < 1:
        raise ValueError(f"num_steps must total at least 1 iteration, got {num_steps}")
    return int(no_grad_steps), int(grad_steps)


EXIT_CRITERIA = ("delta", "kl")


@dataclass(frozen=True)
class ExitRule:
    """Adaptive exit while decoding: a token's recurrence stops once the state has converged, measured by
    the relative state change ‖s_i − s_{i−1}‖ / ‖s_i‖ ("delta") or by the KL divergence between the
    next-token distributions read out after steps i−1 and i ("kl"), each below `eps`."""

    criterion: str
    eps: float

    def __post_init__(self) -> None:
        if self.criterion not in EXIT_CRITERIA:
            raise ValueError(f"--exit_criterion: got '{self.criterion}'; expected one of {', '.join(EXIT_CRITERIA)}")
        if not self.eps >= 0:
            raise ValueError(f"--exit_eps must be >= 0, got {self.eps}")


def token_spread(s: torch.Tensor) -> torch.Tensor:
    """How different the state is across positions: mean over rows and channels of the std over positions,
    over the state's RMS. ~1 for a healthy state; ~0 when the loop has rank-collapsed (every position holds
    the same vector, so the model predicts one distribution everywhere — see docs/recurrence.md)."""
    s = s.detach().float()
    return s.std(dim=1).mean() / s.pow(2).mean().sqrt().clamp_min(1e-30)


class LoopedLM(DecoderLM):
    supports_adaptive_exit = True

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.prelude = nn.ModuleList(Block(cfg) for _ in range(cfg.n_prelude))
        self.core = nn.ModuleList(Block(cfg) for _ in range(cfg.n_core))
        self.coda = nn.ModuleList(Block(cfg) for _ in range(cfg.n_coda))
        self.adapter = nn.Linear(2 * cfg.d_model, cfg.d_model, bias=False) if cfg.injection == "concat" else None
        self.state_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.state_norm else None
        # A fixed draw of the random initial state for eval mode: deterministic outputs, and cached
        # generation sees the same state as an uncached forward.
        eval_state = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(0)) * cfg.init_state_std
        self.register_buffer("eval_state", eval_state, persistent=False)
        self.init_weights()
        if self.adapter is not None and cfg.adapter_init != "normal":
            self.set_passthrough_adapter(cfg.adapter_init)

    def effective_depth(self) -> int:
        return self.cfg.n_prelude + self.cfg.n_core * self.cfg.default_num_steps + self.cfg.n_coda

    def block_lists(self) -> list[BlockList]:
        return [
            BlockList("prelude", self.prelude),
            BlockList("coda", self.coda, before_head=True),
            BlockList("core", self.core, looped=True),
        ]

    def param_parts(self) -> dict[str, nn.Module | None]:
        return {"prelude": self.prelude, "adapter": self.adapter, "core": self.core, "coda": self.coda}

    def flop_terms(self, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1) -> dict[str, float]:
        """Prelude, coda and head once with grad; core and adapter n times without grad, k times with."""
        cfg = self.cfg
        fixed = param_count(self.prelude) + param_count(self.coda) + self.lm_head.weight.numel()
        loop = param_count(self.core) + param_count(self.adapter)
        return loop_flop_terms(
            fixed,
            loop,
            cfg.n_prelude + cfg.n_coda,
            cfg.n_core,
            attention_flops_per_layer(cfg, seq_len),
            no_grad_steps,
            grad_steps,
        )

    @torch.no_grad()
    def set_passthrough_adapter(self, kind: str = "passthrough") -> None:
        """ "passthrough": adapter([s, e]) = e, so every iteration first sees exactly the prelude output and a
        model converted from a pretrained decoder reproduces it at r = 1 — but the state is dropped, so until
        training moves the adapter each iteration recomputes the same thing. "state": adapter([s, e]) = s;
        with init_state "input" (s_0 = e) r = 1 is the same, and each further iteration applies the core to
        its own output, so the state carries what the previous iteration computed."""
        d = self.cfg.d_model
        self.adapter.weight.zero_()
        kept = slice(d, None) if kind == "passthrough" else slice(0, d)
        self.adapter.weight[:, kept].copy_(torch.eye(d))

    def initial_state(self, e: torch.Tensor, noise: NoiseKey | None = None) -> torch.Tensor:
        """s_0: the prelude output, zeros, or random (keyed by `noise` in training, a fixed draw in eval)."""
        kind = self.cfg.init_state
        if kind == "input":
            return e
        if kind == "zeros":
            return torch.zeros_like(e)
        if self.training:
            if noise is not None:
                return noise.draw(e) * self.cfg.init_state_std
            return torch.randn_like(e) * self.cfg.init_state_std
        return self.eval_state.to(e.dtype).expand_as(e)

    def iterate(self, s: torch.Tensor, e: torch.Tensor, ctx: AttentionContext, step: int) -> torch.Tensor:
        if self.adapter is not None:
            s = self.adapter(torch.cat([s, e], dim=-1))
        elif self.cfg.injection == "add":
            s = s + e
        s = self.run_blocks(self.core, s, ctx, ("core", step))
        return self.state_norm(s) if self.state_norm is not None else s

    def trunk(
        self, x: torch.Tensor, ctx: AttentionContext, num_steps: NumSteps, noise: NoiseKey | None
    ) -> tuple[torch.Tensor, ModelOutput]:
        no_grad_steps, grad_steps = split_steps(num_steps, self.cfg.default_num_steps)
        e = self.run_blocks(self.prelude, x, ctx, "prelude")
        s = self.initial_state(e, noise)
        if no_grad_steps:
            with torch.no_grad():
                for step in range(no_grad_steps):
                    s = self.iterate(s, e, ctx, step)
        for step in range(no_grad_steps, no_grad_steps + grad_steps):
            s = self.iterate(s, e, ctx, step)
        stats = {"num_steps": no_grad_steps + grad_steps}
        if self.training and s.shape[1] > 1:  # a training diagnostic; one position has no spread
            stats["state_spread"] = token_spread(s)
        s = self.run_blocks(self.coda, s, ctx, "coda")
        return s, ModelOutput(stats=stats)

    def readout(self, s: torch.Tensor, ctx: AttentionContext) -> torch.Tensor:
        """Next-token log-probabilities [B, V] from the state of the last position. With a cache this writes
        the coda's slots at the running positions; a later readout of the same token overwrites them, so
        probing the distribution after every step leaves the cache as one final readout would."""
        hidden = self.norm(self.run_blocks(self.coda, s, ctx, "coda"))
        return F.log_softmax(self.lm_head(hidden[:, -1]).float(), dim=-1)

    def fill_exited(self, cache: KVCache, step: int, exited: torch.Tensor, position: int) -> None:
        """Rows that exited before `step` compute no keys/values for it, yet later tokens iterating deeper
        attend to them: give those rows step − 1's entries, which by induction are their exit step's
        (Huginn's choice: the converged state stands in for the steps it skipped)."""
        keep = exited[:, None, None]
        for layer in range(self.cfg.n_core):
            source, target = cache.kv[(("core", step - 1), layer)], cache.kv[(("core", step), layer)]
            for src, dst in ((source.k, target.k), (source.v, target.v)):
                dst[:, position] = torch.where(keep, src[:, position], dst[:, position])
            target.filled = cache.end

    @torch.no_grad()
    def decode_step_with_exit(
        self, token: torch.Tensor, cache: KVCache, max_steps: int, rule: ExitRule
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One cached decoding step of tokens [B, 1] with per-row early exit -> (log-probs [B, V], steps [B]).
        An exited row keeps its converged state while the others iterate; with eps = 0 no row ever exits
        and this equals fixed-depth decoding."""
        ctx = self.context(token, None, cache)
        e = self.run_blocks(self.prelude, self.tok_embeddings(token), ctx, "prelude")
        s = self.initial_state(e)
        batch = token.shape[0]
        exited = torch.zeros(batch, dtype=torch.bool, device=token.device)
        exit_step = torch.full((batch,), max_steps - 1, dtype=torch.long, device=token.device)
        previous = None
        for step in range(max_steps):
            new = torch.where(exited[:, None, None], s, self.iterate(s, e, ctx, step))
            if exited.any():
                self.fill_exited(cache, step, exited, ctx.start_pos)
            if rule.criterion == "delta":
                metric = (new - s).flatten(1).norm(dim=-1) / new.flatten(1).norm(dim=-1).clamp(min=1e-12)
            else:
                current = self.readout(new, ctx)
                metric = (
                    F.kl_div(current, previous, log_target=True, reduction="none").sum(-1)
                    if previous is not None
                    else torch.full((batch,), float("inf"), device=token.device)
                )
                previous = current
            s = new
            converged = (metric < rule.eps) & ~exited
            exit_step = torch.where(converged, step, exit_step)
            exited |= converged
            if exited.all():
                for later in range(step + 1, max_steps):
                    self.fill_exited(cache, later, exited, ctx.start_pos)
                break
        log_probs = self.readout(s, ctx)
        cache.advance()
        return log_probs, exit_step + 1
