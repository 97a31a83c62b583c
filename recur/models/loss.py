"""Language-model loss: token cross-entropy through the output head.

`lm_loss` fuses the head matmul with the cross-entropy and processes the tokens in chunks of rows, so the
[B·T, V] logits (6.6 GB in fp32 for GPT-2's vocabulary at 32×1024 tokens) never exist at once. The
gradients with respect to the hidden states and the head weight are computed chunk by chunk during the
forward (the Liger "fused linear cross-entropy" scheme): no logits are kept for backward and none are
recomputed, so the FLOPs equal those of the plain head + cross-entropy.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100  # as F.cross_entropy: such targets contribute zero loss
DEFAULT_CHUNK_ROWS = 4096  # 4096 × 50304 fp32 logits ≈ 0.8 GB live at a time


def _compute_dtype(device: torch.device, weight: torch.Tensor) -> torch.dtype:
    """The dtype the head matmul would run in here: autocast's if enabled, else the weight's."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return weight.dtype


def _chunk(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, row_weights: torch.Tensor, want_grad: bool):
    """Weighted CE of one chunk of rows and, if wanted, its gradients w.r.t. h and w (fp32 for w)."""
    logits = (h @ w.t()).float()
    valid = targets != IGNORE_INDEX
    safe_tgt = torch.where(valid, targets, 0)
    rw = row_weights * valid
    lse = torch.logsumexp(logits, dim=-1)
    loss = ((lse - logits.gather(1, safe_tgt[:, None]).squeeze(1)) * rw).sum()
    if not want_grad:
        return loss, None, None
    # d(w·CE)/dlogits = w · (softmax − onehot)
    grad = (logits - lse[:, None]).exp()
    grad = grad.scatter_add(1, safe_tgt[:, None], -torch.ones_like(lse[:, None]))
    grad = (grad * rw[:, None]).to(h.dtype)
    return loss, grad @ w, (grad.t() @ h).float()


@lru_cache(maxsize=1)
def _compiled_chunk():
    # On GPU the chunk's softmax/gradient elementwise work is fused by inductor (the eager version spends
    # ~3× the matmul time in separate fp32 passes over the logits); the loop over chunks stays eager.
    return torch.compile(_chunk, dynamic=False)


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i w_i · CE(hidden_i @ weightᵀ, target_i), gradients computed in the forward pass."""

    @staticmethod
    def forward(
        ctx,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        row_weights: torch.Tensor,
        chunk_rows: int,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            grad_h = torch.empty_like(h) if want_grad else None
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_grad else None
            # Inside a whole-model graph (compile_model(whole=True)) the chunk is traced with the rest.
            step = _compiled_chunk() if hidden.is_cuda and not torch.compiler.is_compiling() else _chunk
            for start in range(0, h.shape[0], chunk_rows):
                rows = slice(start, start + chunk_rows)
                loss, dh, dw = step(h[rows], w, targets[rows], row_weights[rows], want_grad)
                total += loss
                if want_grad:
                    grad_h[rows] = dh
                    grad_w += dw
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        dh = (grad_h * grad_out).to(h_dtype) if ctx.needs_input_grad[0] else None
        dw = (grad_w * grad_out).to(w_dtype) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None


def _row_weights(targets: torch.Tensor, loss_mask: torch.Tensor | None) -> torch.Tensor:
    """Weight of each token in the mean: 1/N over all tokens, or mask/Σmask over masked ones."""
    flat = targets.reshape(-1)
    if loss_mask is None:
        return torch.full(flat.shape, 1.0 / flat.numel(), dtype=torch.float32, device=flat.device)
    mask = loss_mask.reshape(-1).float()
    return mask / mask.sum().clamp(min=1)


def full_lm_loss(
    hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor, loss_mask: torch.Tensor | None
) -> torch.Tensor:
    """Reference: materialise all logits in fp32, then the mean token cross-entropy over loss_mask."""
    logits = head(hidden).float()
    losses = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return (losses * _row_weights(targets, loss_mask)).sum()


def lm_loss(
    hidden: torch.Tensor,
    head: nn.Linear,
    targets: torch.Tensor,
    loss_mask: torch.Tensor | None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Mean token cross-entropy (fp32 softmax) over positions where loss_mask is set. hidden: [B, T, d];
    targets: [B, T]; chunk_rows: tokens per chunk of the fused head + CE (0 = plain full logits)."""
    if chunk_rows < 0:
        raise ValueError(f"lm_loss: chunk_rows must be >= 0, got {chunk_rows}")
    # DeepSpeed ZeRO-3 gathers a partitioned head weight only when head() is called, so reading
    # head.weight directly would see an empty shard: those models take the plain path.
    if chunk_rows == 0 or head.bias is not None or hasattr(head.weight, "ds_id"):
        return full_lm_loss(hidden, head, targets, loss_mask)
    flat = hidden.reshape(-1, hidden.shape[-1])
    dtype = _compute_dtype(hidden.device, head.weight)
    return _ChunkedLinearCrossEntropy.apply(
        flat, head.weight, targets.reshape(-1), _row_weights(targets, loss_mask), chunk_rows, dtype
    )
