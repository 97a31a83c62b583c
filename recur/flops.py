"""Parameter counts by component and recurrence-aware training FLOPs.

Convention (Kaplan/Chinchilla, extended to truncated backprop): a parameter costs 2 FLOPs per token
forward and 4 backward. Iterations under no_grad cost only the forward:
    FLOPs/token = 6·N₁ + 2·N₂ + attention,   N₁ = params applied with grad (prelude, coda, head,
    adapter + core × k), N₂ = (adapter + core) × n.
Embedding lookups are free (no matmul); a tied head still costs its matmul. Attention adds
2·2·T·(n_heads·head_dim) per token per layer application forward (QKᵀ and AV, no causal discount,
as in nanoGPT/PaLM), ×3 with grad.
"""

from __future__ import annotations

from torch import nn

from recur.models.config import ModelConfig


def _numel(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def count_params(model: nn.Module) -> dict[str, int]:
    """Parameters by component; `total` counts tied weights once, `non_embedding` excludes the embeddings."""
    parts = {name: _numel(getattr(model, name, None))
             for name in ("tok_embeddings", "prelude", "adapter", "core", "coda", "layers", "norm")}
    head = model.lm_head.weight
    parts["lm_head"] = 0 if head is model.tok_embeddings.weight else head.numel()
    parts = {k: v for k, v in parts.items() if v}
    parts["total"] = sum(p.numel() for p in model.parameters())
    parts["non_embedding"] = parts["total"] - parts.get("tok_embeddings", 0)
    return parts


def _matmul_params(model: nn.Module, names: tuple[str, ...]) -> int:
    return sum(_numel(getattr(model, name, None)) for name in names)


def flops_per_token(model: nn.Module, cfg: ModelConfig, seq_len: int, no_grad_steps: int = 0,
                    grad_steps: int = 1) -> float:
    """Training FLOPs per token for one step that runs n = no_grad_steps, k = grad_steps iterations."""
    head = model.lm_head.weight.numel()
    attn_dim = cfg.n_heads * cfg.head_dim
    attn_per_layer = 4 * seq_len * attn_dim
    if hasattr(model, "core"):
        fixed = _matmul_params(model, ("prelude", "coda")) + head
        loop = _matmul_params(model, ("core", "adapter"))
        fixed_layers, loop_layers = cfg.n_prelude + cfg.n_coda, cfg.n_core
    else:  # non-looped variants: every parameter is applied once, with grad
        tied = model.lm_head.weight is model.tok_embeddings.weight
        fixed = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("tok_embeddings"))
        fixed += head if tied else 0
        loop, fixed_layers, loop_layers = 0, cfg.n_layers, 0
    n1 = fixed + loop * grad_steps
    n2 = loop * no_grad_steps
    attn = attn_per_layer * (3 * (fixed_layers + loop_layers * grad_steps) + loop_layers * no_grad_steps)
    return 6 * n1 + 2 * n2 + attn
