"""Mamba-2 mixer layer (SSD) in pure PyTorch, with mamba-ssm's Triton scan as an optional backend.

The parameterisation follows ``mamba_ssm.modules.mamba2.Mamba2`` (default options: no d_mlp split,
per-head D, gated RMSNorm applied after the gate) so a state dict saved from one loads into the other
with identical names and shapes: ``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``, ``norm.weight``,
``out_proj``.

Tensor layout conventions used throughout (matching mamba-ssm):
    x: [batch, T, nheads, headdim]      dt: [batch, T, nheads] (already positive, i.e. after softplus)
    A: [nheads] (negative)              B, C: [batch, T, ngroups, d_state]
    ssm state: [batch, nheads, headdim, d_state]
Head ``h`` reads B/C of group ``h // (nheads // ngroups)``.

Packed rows: ``seq_idx`` / ``doc_ids`` ([batch, T], non-decreasing per row, as mamba-ssm's ``seq_idx``)
restart the recurrence where the document changes (the state carried into a document's first token is
dropped) and keep the causal conv from reading the previous document's last tokens.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["auto", "torch", "mamba_ssm"]
_BACKENDS = ("auto", "torch", "mamba_ssm")

# Initialisation constants of mamba-ssm's Mamba2, kept identical so fresh layers behave the same.
_A_INIT_RANGE = (1.0, 16.0)
_DT_INIT_FLOOR = 1e-4


# --------------------------------------------------------------------------------------------------
# Optional mamba-ssm kernels
# --------------------------------------------------------------------------------------------------


class Mamba2Kernels(NamedTuple):
    """The two Triton entry points of mamba-ssm that the layer uses."""

    chunk_scan_combined: Callable[..., Tensor | tuple[Tensor, Tensor]]
    rmsnorm_fn: Callable[..., Tensor]


@functools.lru_cache(maxsize=1)
def try_import_mamba2() -> Mamba2Kernels | None:
    """Import mamba-ssm's Mamba-2 Triton kernels, or return None when the package is not usable.

    ``import mamba_ssm`` unconditionally imports the compiled Mamba-1 extension ``selective_scan_cuda``.
    Wheels built with ``MAMBA_SKIP_CUDA_BUILD=TRUE`` do not contain it, although the Mamba-2 path
    (pure Triton) works fine. When mamba_ssm is installed but that extension is missing we register an
    empty stand-in module under its name so the package import succeeds; Mamba-1 calls would then fail,
    but we never make them.
    """
    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    stand_in = "selective_scan_cuda" not in sys.modules and importlib.util.find_spec("selective_scan_cuda") is None
    if stand_in:
        sys.modules["selective_scan_cuda"] = types.ModuleType("selective_scan_cuda")
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as error:
        if stand_in:  # leave no trace of the stand-in when mamba-ssm is unusable anyway (e.g. no triton)
            del sys.modules["selective_scan_cuda"]
        # Installed but unusable is worth saying once: otherwise "auto" silently falls back to the slow scan.
        warnings.warn(
            f"mamba_ssm is installed but its Mamba-2 kernels do not import ({error}); using the pure-PyTorch SSD scan",
            stacklevel=2,
        )
        return None
    return Mamba2Kernels(chunk_scan_combined=mamba_chunk_scan_combined, rmsnorm_fn=rmsnorm_fn)


# --------------------------------------------------------------------------------------------------
# Pure-PyTorch SSD scan
# --------------------------------------------------------------------------------------------------


def _heads_per_group(x: Tensor, B: Tensor) -> int:
    nheads, ngroups = x.shape[2], B.shape[2]
    if nheads % ngroups != 0:
        raise ValueError(f"ssd scan: nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    return nheads // ngroups


def _segsum(a: Tensor) -> Tensor:
    """Pairwise sums ``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for i >= j, and -inf above the diagonal.

    Built from a masked cumulative sum over a repeated copy rather than as a difference of two
    cumulative sums: the difference cancels catastrophically once the running sum of log-decays is
    large, while this form only ever adds the terms that belong to the segment.
    """
    n = a.shape[-1]
    strictly_lower = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(-1)
    # rep[..., i, j] = a[..., i] for i > j, else 0; summing down i gives the segment sums.
    rep = a.unsqueeze(-1).expand(*a.shape, n).masked_fill(~strictly_lower, 0.0)
    out = rep.cumsum(dim=-2)
    lower = torch.ones(n, n, dtype=torch.bool, device=a.device).tril(0)
    return out.masked_fill(~lower, -math.inf)


def document_starts(seq_idx: Tensor) -> Tensor:
    """[batch, T] bool: True where a position begins a new document (never at position 0, so an
    initial state still flows into the first document)."""
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def ssd_chunked(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int,
    initial_state: Tensor | None = None,
    D: Tensor | None = None,
    seq_idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunked SSD scan: exact quadratic attention-like form inside each chunk, recurrence across chunks.

    Computes h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T and y_t = C_t h_t (+ D x_t), with h_0 =
    ``initial_state`` (zeros when None). Shapes are in the module docstring. Computation runs in fp32;
    ``y`` is returned in ``x.dtype`` and the final state ``[batch, nheads, headdim, d_state]`` in fp32.
    T need not be a multiple of ``chunk_size``: the tail is padded with dt = 0, which is an identity
    step (decay 1, zero input), so neither the outputs nor the final state change. With ``seq_idx`` the
    log-decay at each document start is -inf: every product of decays that crosses it is exactly 0.
    """
    if chunk_size <= 0:
        raise ValueError(f"ssd_chunked: chunk_size must be positive, got {chunk_size}")
    batch, seqlen, nheads, headdim = x.shape
    rep = _heads_per_group(x, B)
    ngroups, d_state = B.shape[2], B.shape[3]
    out_dtype = x.dtype
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))

    pad = (-seqlen) % chunk_size
    if pad:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    nchunks = x.shape[1] // chunk_size
    L = chunk_size

    # Split heads into (group, head-in-group) so B and C broadcast over heads without being copied.
    xdt = (x * dt.unsqueeze(-1)).view(batch, nchunks, L, ngroups, rep, headdim)
    B = B.reshape(batch, nchunks, L, ngroups, d_state)
    C = C.reshape(batch, nchunks, L, ngroups, d_state)
    # Log-decays, laid out [b, g, r, c, l] so cumulative sums run along the last axis.
    a = dt * A
    if seq_idx is not None:
        starts = F.pad(document_starts(seq_idx), (0, pad))
        a = a.masked_fill(starts.unsqueeze(-1), -math.inf)
    a = a.view(batch, nchunks, L, ngroups, rep).permute(0, 3, 4, 1, 2)
    a_cum = a.cumsum(dim=-1)

    # 1) Within a chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1} + ... + a_l) dt_s x_s.
    decay_intra = torch.exp(_segsum(a))  # [b, g, r, c, l, s]
    scores = torch.einsum("bclgn,bcsgn->bgcls", C, B).unsqueeze(2) * decay_intra
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", scores, xdt)

    # 2) State contributed by each chunk on its own, decayed to the chunk's end: the last row of the
    # segment sums (not a difference of cumulative sums, which is -inf - -inf after a document start).
    decay_to_end = decay_intra[..., -1, :]  # [b, g, r, c, l]
    chunk_states = torch.einsum("bcsgn,bgrcs,bcsgrp->bcgrpn", B, decay_to_end, xdt)

    # 3) Recurrence across chunks (as a decay-weighted sum, one segsum over chunk totals).
    if initial_state is None:
        init = chunk_states.new_zeros(batch, 1, ngroups, rep, headdim, d_state)
    else:
        expected = (batch, nheads, headdim, d_state)
        if tuple(initial_state.shape) != expected:
            raise ValueError(f"ssd_chunked: initial_state must have shape {expected}, got {tuple(initial_state.shape)}")
        init = initial_state.float().reshape(batch, 1, ngroups, rep, headdim, d_state)
    states = torch.cat([init, chunk_states], dim=1)  # [b, c+1, g, r, p, n]
    decay_chunks = torch.exp(_segsum(F.pad(a_cum[..., -1], (1, 0))))  # [b, g, r, c+1, c+1]
    states = torch.einsum("bgrzc,bcgrpn->bzgrpn", decay_chunks, states)
    prev_states, final_state = states[:, :-1], states[:, -1]

    # 4) Contribution of the state entering each chunk, decayed to each position inside it.
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", C, prev_states, torch.exp(a_cum))

    y = y.reshape(batch, nchunks * L, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + D.float().view(nheads, 1) * x[:, :seqlen]
    return y.to(out_dtype), final_state.reshape(batch, nheads, headdim, d_state)


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One recurrence step. x: [b, h, p], dt: [b, h], B/C: [b, g, n], state: [b, h, p, n] -> (y [b, h, p], state)."""
    rep = x.shape[1] // B.shape[1]
    B = B.float().repeat_interleave(rep, dim=1)
    C = C.float().repeat_interleave(rep, dim=1)
    xf, dt = x.float(), dt.float()
    decay = torch.exp(dt * A.float())[..., None, None]
    state = state.float() * decay + (dt[..., None] * xf)[..., None] * B[:, :, None, :]
    y = torch.einsum("bhpn,bhn->bhp", state, C)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype), state


def ssd_sequential(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    initial_state: Tensor | None = None,
    D: Tensor | None = None,
    seq_idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token SSD recurrence (the definition ``ssd_chunked`` must reproduce); same shapes and returns."""
    batch, seqlen, nheads, headdim = x.shape
    _heads_per_group(x, B)
    state = (
        x.new_zeros(batch, nheads, headdim, B.shape[3], dtype=torch.float32)
        if initial_state is None
        else initial_state.float()
    )
    starts = document_starts(seq_idx) if seq_idx is not None else None
    ys = []
    for t in range(seqlen):
        if starts is not None:  # a new document starts from the zero state
            state = state.masked_fill(starts[:, t, None, None, None], 0.0)
        y_t, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], state, D)
        ys.append(y_t)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(x.shape)
    return y, state


# --------------------------------------------------------------------------------------------------
# Layer
# --------------------------------------------------------------------------------------------------


class GatedRMSNorm(nn.Module):
    """RMSNorm of ``y * silu(z)`` over groups of ``group_size`` channels (mamba-ssm's norm_before_gate=False)."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        if dim % group_size != 0:
            raise ValueError(f"GatedRMSNorm: dim ({dim}) must be a multiple of group_size ({group_size})")
        self.eps = eps
        self.group_size = group_size
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        gated = y.float() * F.silu(z.float())
        groups = gated.unflatten(-1, (-1, self.group_size))
        normed = groups * torch.rsqrt(groups.square().mean(dim=-1, keepdim=True) + self.eps)
        return (normed.flatten(-2) * self.weight.float()).to(y.dtype)


class Mamba2Mixer(nn.Module):
    """Mamba-2 sequence mixer: in_proj -> causal depthwise conv -> SSD scan -> gated RMSNorm -> out_proj.

    ``backend``: "torch" always uses :func:`ssd_chunked`; "mamba_ssm" always uses mamba-ssm's Triton
    kernels (constructor raises if the package is unusable; forward raises on non-CUDA input);
    "auto" uses the Triton kernels for CUDA inputs when mamba-ssm imports, the pure-PyTorch path otherwise.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        headdim: int = 64,
        expand: int = 2,
        d_conv: int = 4,
        ngroups: int = 1,
        chunk_size: int = 64,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        bias: bool = False,
        conv_bias: bool = True,
        norm_eps: float = 1e-5,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        for name, value in (
            ("d_model", d_model),
            ("d_state", d_state),
            ("headdim", headdim),
            ("expand", expand),
            ("d_conv", d_conv),
            ("ngroups", ngroups),
            ("chunk_size", chunk_size),
        ):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"Mamba2Mixer: {name} must be a positive int, got {value!r}")
        d_inner = expand * d_model
        if d_inner % headdim != 0:
            raise ValueError(f"Mamba2Mixer: expand*d_model ({d_inner}) must be a multiple of headdim ({headdim})")
        nheads = d_inner // headdim
        if nheads % ngroups != 0:
            raise ValueError(f"Mamba2Mixer: number of heads ({nheads}) must be a multiple of ngroups ({ngroups})")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba2Mixer: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if backend not in _BACKENDS:
            raise ValueError(f"Mamba2Mixer: backend must be one of {_BACKENDS}, got {backend!r}")
        if backend == "mamba_ssm" and try_import_mamba2() is None:
            raise ValueError(
                "Mamba2Mixer: backend='mamba_ssm' needs the mamba_ssm package (with triton); it is not importable "
                "here. Install it (e.g. `python -m pip install --no-deps wheels/mamba_ssm-*.whl`) "
                "or use backend='torch'/'auto'."
            )

        self.d_model, self.d_state, self.headdim, self.d_conv = d_model, d_state, headdim, d_conv
        self.ngroups, self.chunk_size, self.backend = ngroups, chunk_size, backend
        self.d_inner, self.nheads = d_inner, nheads
        self.conv_dim = d_inner + 2 * ngroups * d_state

        # in_proj output order is [z, x, B, C, dt], as in mamba-ssm.
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * ngroups * d_state + nheads, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1, bias=conv_bias
        )

        # dt_bias = softplus^-1(dt) for dt log-uniform in [dt_min, dt_max], so softplus(dt_bias) starts there.
        dt = torch.exp(torch.rand(nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=_DT_INIT_FLOOR)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(nheads).uniform_(*_A_INIT_RANGE).log())
        self.D = nn.Parameter(torch.ones(nheads))
        # Same marker mamba-ssm sets: these scalars-per-head are excluded from weight decay.
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True

        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // ngroups, eps=norm_eps)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    # ---- helpers -------------------------------------------------------------------------------

    def _kernels_for(self, u: Tensor) -> Mamba2Kernels | None:
        if self.backend == "torch":
            return None
        if self.backend == "mamba_ssm":
            if not u.is_cuda:
                raise ValueError(f"Mamba2Mixer: backend='mamba_ssm' needs CUDA input, got device {u.device}")
            return try_import_mamba2()
        return try_import_mamba2() if u.is_cuda else None

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        gn = self.ngroups * self.d_state
        x, B, C = torch.split(xbc, [self.d_inner, gn, gn], dim=-1)
        lead = x.shape[:-1]
        return (
            x.reshape(*lead, self.nheads, self.headdim),
            B.reshape(*lead, self.ngroups, self.d_state),
            C.reshape(*lead, self.ngroups, self.d_state),
        )

    def allocate_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """Zero recurrent state: conv_state [b, conv_dim, d_conv] (in ``dtype``), ssm_state [b, h, p, n] (fp32)."""
        device = self.in_proj.weight.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=device, dtype=dtype)
        ssm_state = torch.zeros(batch_size, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32)
        return conv_state, ssm_state

    # ---- full sequence ---------------------------------------------------------------------------

    def _causal_conv(self, conv_in: Tensor, doc_ids: Tensor | None) -> Tensor:
        """Depthwise causal conv of conv_in [B, C, T] -> [B, T, C]. With doc_ids, taps that reach into an
        earlier document are taken back out; only a document's first d_conv - 1 positions have such taps,
        so the correction gathers just those instead of masking (and saving) whole shifted copies."""
        seqlen = conv_in.shape[-1]
        out = self.conv1d(conv_in)[..., :seqlen].transpose(1, 2)
        if doc_ids is None:
            return out
        positions = torch.arange(seqlen, device=doc_ids.device).expand_as(doc_ids)
        doc_start = torch.where(document_starts(doc_ids), positions, 0).cummax(dim=1).values
        offset = positions - doc_start  # position inside its document
        rows, cols = torch.nonzero((offset < self.d_conv - 1) & (doc_start > 0), as_tuple=True)
        if rows.numel() == 0:
            return out
        weight = self.conv1d.weight.squeeze(1)  # [C, K]; tap K-1 multiplies the current position
        leak = out.new_zeros(rows.shape[0], out.shape[-1])
        for shift in range(1, self.d_conv):
            # This tap reads the previous document (before the row start it read the conv's zero padding).
            crosses = ((offset[rows, cols] < shift) & (cols >= shift)).unsqueeze(1)
            source = conv_in[rows, :, (cols - shift).clamp(min=0)]
            leak = leak + source * crosses * weight[:, -1 - shift]
        return out.index_put((rows, cols), -leak.to(out.dtype), accumulate=True)

    def forward(
        self, u: Tensor, return_state: bool = False, doc_ids: Tensor | None = None
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """u: [B, T, d_model] -> [B, T, d_model]; with ``return_state`` also the (conv_state, ssm_state)
        after the last token, ready to continue generation with :meth:`step`. ``doc_ids`` [B, T]
        (non-decreasing per row): packed documents do not see each other."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2Mixer: expected input [batch, T, {self.d_model}], got {tuple(u.shape)}")
        seqlen = u.shape[1]
        z, xbc, dt = torch.split(self.in_proj(u), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_in = xbc.transpose(1, 2)
        xbc = F.silu(self._causal_conv(conv_in, doc_ids))
        x, B, C = self._split_xbc(xbc)
        A = -torch.exp(self.A_log.float())

        kernels = self._kernels_for(u)
        if kernels is None:
            y, final_state = ssd_chunked(
                x, F.softplus(dt.float() + self.dt_bias.float()), A, B, C, self.chunk_size, D=self.D, seq_idx=doc_ids
            )
            y = self.norm(y.flatten(-2), z)
        else:
            scanned = kernels.chunk_scan_combined(
                x,
                dt,
                A,
                B,
                C,
                self.chunk_size,
                D=self.D,
                dt_bias=self.dt_bias,
                dt_softplus=True,
                seq_idx=None if doc_ids is None else doc_ids.to(torch.int32),
                return_final_states=return_state,
            )
            y, final_state = scanned if return_state else (scanned, None)
            y = kernels.rmsnorm_fn(
                y.flatten(-2),
                self.norm.weight,
                None,
                z=z,
                eps=self.norm.eps,
                group_size=self.norm.group_size,
                norm_before_gate=False,
            )
        out = self.out_proj(y)
        if not return_state:
            return out
        # The conv state holds the last d_conv pre-conv inputs, left-padded with zeros for short inputs.
        conv_state = F.pad(conv_in, (max(self.d_conv - seqlen, 0), 0))[..., -self.d_conv :]
        return out, (conv_state, final_state.float())

    # ---- recurrent inference -------------------------------------------------------------------

    def step(self, u_t: Tensor, conv_state: Tensor, ssm_state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token. u_t: [B, d_model]; states as from :meth:`allocate_state` or ``forward(..., return_state=True)``.

        Returns (y_t [B, d_model], new conv_state, new ssm_state); the input states are not modified.
        """
        if u_t.dim() != 2 or u_t.shape[-1] != self.d_model:
            raise ValueError(f"Mamba2Mixer.step: expected input [batch, {self.d_model}], got {tuple(u_t.shape)}")
        z, xbc, dt = torch.split(self.in_proj(u_t), [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        conv_state = torch.cat([conv_state[..., 1:], xbc.unsqueeze(-1).to(conv_state.dtype)], dim=-1)
        xbc = (conv_state * self.conv1d.weight.squeeze(1)).sum(dim=-1)
        if self.conv1d.bias is not None:
            xbc = xbc + self.conv1d.bias
        x, B, C = self._split_xbc(F.silu(xbc).to(u_t.dtype))
        dt = F.softplus(dt.float() + self.dt_bias.float())
        y, ssm_state = ssd_step(x, dt, -torch.exp(self.A_log.float()), B, C, ssm_state, self.D)
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y), conv_state, ssm_state
