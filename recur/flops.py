"""Parameter counts by component and recurrence-aware training FLOPs.

Convention (Kaplan/Chinchilla, extended to truncated backprop): a parameter costs 2 FLOPs per token
forward and 4 backward. Iterations under no_grad cost only the forward:
    FLOPs/token = 6·N₁ + 2·N₂ + attention,   N₁ = params applied with grad (prelude, coda, head,
    adapter + core × k), N₂ = (adapter + core) × n.
Embedding lookups are free (no matmul); a tied head still costs its matmul. Attention adds
2·2·T·(n_heads·head_dim) per token per layer application forward (QKᵀ and AV, no causal discount,
as in nanoGPT/PaLM), ×3 with grad.

Which parameters run how often is a property of the variant: each model states it in its own
`DecoderLM.flop_terms` (and its components in `param_parts`); this module only combines and integrates.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from recur.models.config import ModelConfig
from recur.models.lm import DecoderLM, param_count
from recur.recurrence import RecurrenceSampler


def count_params(model: DecoderLM) -> dict[str, int]:
    """Parameters by component (the model's param_parts between embeddings and final norm); `total` counts
    tied weights once, `non_embedding` excludes the embeddings."""
    components = {"tok_embeddings": model.tok_embeddings, **model.param_parts(), "norm": model.norm}
    parts = {name: param_count(module) for name, module in components.items()}
    head = model.lm_head.weight
    parts["lm_head"] = 0 if head is model.tok_embeddings.weight else head.numel()
    parts = {k: v for k, v in parts.items() if v}
    parts["total"] = sum(p.numel() for p in model.parameters())
    parts["non_embedding"] = parts["total"] - parts.get("tok_embeddings", 0)
    return parts


def flop_terms(
    model: DecoderLM, cfg: ModelConfig, seq_len: int, no_grad_steps: float = 0, grad_steps: float = 1
) -> dict[str, float]:
    """Per-token pieces of the training cost: N₁ (params applied with grad), N₂ (params applied without
    grad) and attention FLOPs, as the model's own `flop_terms` states them. n and k may be expectations
    (floats): the cost is affine in both. `cfg` is the config the model was built from; the model
    computes from its own copy of it."""
    return model.flop_terms(seq_len, no_grad_steps, grad_steps)


def flops_per_token(
    model: DecoderLM,
    cfg: ModelConfig,
    seq_len: int,
    no_grad_steps: int = 0,
    grad_steps: int = 1,
    attended: float = 1.0,
) -> float:
    """Training FLOPs per token for one step that runs n = no_grad_steps, k = grad_steps iterations. The
    attention term counts seq_len keys per query (nanoGPT/PaLM's convention); `attended` scales it to the
    fraction of those keys the causal and document masks leave (attended_key_fraction), so that masked-out
    attention counts as not done."""
    return training_flops(flop_terms(model, cfg, seq_len, no_grad_steps, grad_steps), attended)


def training_flops(terms: dict[str, float], attended: float = 1.0) -> float:
    """6·N₁ + 2·N₂ + attention (scaled by `attended`) from flop_terms' pieces."""
    return 6 * terms["n1"] + 2 * terms["n2"] + terms["attention"] * attended


def attended_key_fraction(doc_ids: torch.Tensor) -> float:
    """The fraction of the rows × seq_len × seq_len query-key pairs that causal attention within each
    document computes, for a [rows, seq_len] tensor of per-token document ids (a document is a run of equal
    ids): Σ L(L+1)/2 over the documents, over rows·T². One document per row gives (T + 1) / 2T."""
    rows, seq_len = doc_ids.shape
    position = torch.arange(seq_len).expand(rows, seq_len)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    doc_start = torch.where(starts, position, 0).cummax(dim=1).values
    # A query at offset j of its document attends to j + 1 keys; summed over a document: L(L+1)/2.
    return float((position - doc_start + 1).double().sum()) / (rows * seq_len * seq_len)


# ---------------------------------------------------------------------------------------------
# Integrating a recurrence curriculum over a run
# ---------------------------------------------------------------------------------------------

EXPECTATIONS = ("analytic", "draws")


@lru_cache(maxsize=4096)
def expected_steps(
    mean: int, depth: int, sampling: str = "poisson-lognormal", sigma: float = 0.5, max_recurrence: int | None = None
) -> tuple[float, float]:
    """(E[n], E[k]) for one step with scheduled mean r̄ and backprop depth s under the sampler's law.

    Poisson-lognormal: r = Poisson(λ) + 1 with log λ ~ Normal(log r̄ − σ²/2, σ). P(r = j) is the Poisson
    pmf at j − 1 averaged over λ by 96-point Gauss–Hermite quadrature in log λ; the support is summed
    far into the tail (P beyond it < 1e-12). Then r is capped at max_recurrence, k = min(s, r), n = r − k."""
    if sampling == "fixed":
        r = min(mean, max_recurrence) if max_recurrence is not None else mean
        return float(r - min(depth, r)), float(min(depth, r))
    nodes, weights = np.polynomial.hermite_e.hermegauss(96)
    weights = weights / weights.sum()
    log_lam = math.log(mean) - sigma**2 / 2 + sigma * nodes  # [Q]
    top = int(math.exp(math.log(mean) + 9 * sigma)) * 3 + 60
    j = np.arange(1, top + 1)  # r values
    lgamma = np.array([math.lgamma(x) for x in j])
    log_pmf = (j[None, :] - 1) * log_lam[:, None] - np.exp(log_lam)[:, None] - lgamma[None, :]
    prob = (weights[:, None] * np.exp(log_pmf)).sum(axis=0)
    r = np.minimum(j, max_recurrence) if max_recurrence is not None else j
    k = np.minimum(depth, r)
    return float((prob * (r - k)).sum()), float((prob * k).sum())


def curriculum_flops(
    model: DecoderLM,
    cfg: ModelConfig,
    sampler: RecurrenceSampler,
    seq_len: int,
    tokens_per_step: int,
    steps: int | None = None,
    expectation: str = "draws",
) -> dict:
    """Training FLOPs of a run under the recurrence curriculum: Σ_steps tokens · (6·N₁ + 2·N₂ + attention).

    expectation="draws" replays the sampler's seeded (n, k) of every step, so the total equals what the
    trainer logs; "analytic" uses E[n], E[k] of the sampling law at each step's scheduled (r̄, s)."""
    if expectation not in EXPECTATIONS:
        raise ValueError(f"--expectation: got '{expectation}'; expected one of {', '.join(EXPECTATIONS)}")
    steps = sampler.total_steps if steps is None else steps
    totals = {"n1": 0.0, "n2": 0.0, "attention": 0.0}
    sum_n = sum_k = 0.0
    for step in range(steps):
        if expectation == "draws" or sampler.single_pass(step):  # the single-pass phase is exactly (0, 1)
            depth = sampler(step)
            n, k = float(depth.no_grad_steps), float(depth.grad_steps)
        else:
            c = sampler.cfg
            n, k = expected_steps(*sampler.schedule(step), c.sampling, c.sigma, c.max_recurrence)
        for name, value in flop_terms(model, cfg, seq_len, n, k).items():
            totals[name] += value * tokens_per_step
        sum_n, sum_k = sum_n + n, sum_k + k
    tokens = steps * tokens_per_step
    return {
        "steps": steps,
        "tokens": tokens,
        "mean_no_grad_steps": sum_n / max(steps, 1),
        "mean_grad_steps": sum_k / max(steps, 1),
        "flops_6DN1": 6 * totals["n1"],
        "flops_2DN2": 2 * totals["n2"],
        "flops_attention": totals["attention"],
        "total_flops": training_flops(totals),
    }
