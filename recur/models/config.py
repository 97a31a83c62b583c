"""Model configuration: one dataclass describes every variant of the ladder."""

from __future__ import annotations

from dataclasses import dataclass, field

VARIANTS = ("baseline", "recurrent", "shared_loop", "latent", "act", "ssm", "ssm_mem")
LOOPED_VARIANTS = ("recurrent", "shared_loop")
LOOPED_BLOCK_NORM = "sandwich"  # see docs/recurrence.md for the ablation that chose it


@dataclass
class ModelConfig:
    """Shape and behaviour of a model. Unset (None) fields are derived in `resolved()`."""

    variant: str = "recurrent"
    vocab_size: int = 264
    d_model: int = 256
    n_layers: int | None = None  # unique layers; for `recurrent` = n_prelude + n_core + n_coda
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention when < n_heads
    head_dim: int | None = None
    d_ff: int | None = None  # SwiGLU hidden width; default 8/3·d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # e.g. Llama-3 {"rope_type": "llama3", "factor": 32, ...}
    norm_eps: float = 1e-5
    # "pre" (Llama), "post" (OLMo-2: norm on each sublayer's output) or "sandwich" (Huginn: norm on each
    # sublayer's input and on the residual after it); None = the variant's default (LOOPED_BLOCK_NORM for
    # recurrent/shared_loop, "pre" otherwise). Converted HF models record theirs explicitly.
    block_norm: str | None = None
    qk_norm: bool = False  # RMSNorm over the full q/k projections (OLMo-2 style)
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    attn_backend: str = "auto"  # see recur/models/attention.py for the backends
    # Looped variants: prelude / recurrent core / coda.
    n_prelude: int | None = None
    n_core: int | None = None
    n_coda: int | None = None
    injection: str = "concat"  # concat (adapter 2d -> d) | add | none
    adapter_init: str = "normal"  # normal | passthrough (adapter copies the prelude output: retrofitting)
    init_state: str = "random"  # random | zeros | input (state starts as the prelude output)
    # Small against the unit-RMS prelude output: with std 1 the adapter first sees mostly noise in the state
    # half and learns to ignore the state, after which every iteration recomputes the same thing.
    init_state_std: float = 0.02
    state_norm: bool = False  # RMSNorm on the state after every iteration (stabilises very deep loops)
    default_num_steps: int = 4  # recurrence used when forward() is not told num_steps
    # Variant-specific knobs (latent/act/ssm/ssm_mem) live here so one config serialises any model.
    extra: dict = field(default_factory=dict)

    def resolved(self) -> ModelConfig:
        """Return a copy with every derived field filled in and the whole shape validated."""
        from dataclasses import replace

        if self.variant not in VARIANTS:
            raise ValueError(f"--model.variant: unknown variant '{self.variant}'; expected one of {', '.join(VARIANTS)}")
        cfg = replace(self, extra=dict(self.extra))
        if cfg.d_model % cfg.n_heads and cfg.head_dim is None:
            raise ValueError(f"--model.d_model {cfg.d_model} is not divisible by --model.n_heads {cfg.n_heads}")
        cfg.head_dim = cfg.head_dim or cfg.d_model // cfg.n_heads
        cfg.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        if cfg.n_heads % cfg.n_kv_heads:
            raise ValueError(f"--model.n_heads {cfg.n_heads} must be a multiple of --model.n_kv_heads {cfg.n_kv_heads}")
        if cfg.d_ff is None:
            hidden = int(8 * cfg.d_model / 3)
            cfg.d_ff = -(-hidden // cfg.ffn_multiple_of) * cfg.ffn_multiple_of
        if cfg.block_norm is None:
            cfg.block_norm = LOOPED_BLOCK_NORM if cfg.variant in LOOPED_VARIANTS else "pre"
        if cfg.variant == "recurrent":
            cfg._resolve_loop_split()
        elif cfg.variant == "shared_loop":
            # All unique layers form the looped core; the residual stream itself is iterated.
            cfg.n_layers = cfg.n_layers or cfg.n_core or 4
            cfg.n_prelude, cfg.n_core, cfg.n_coda = 0, cfg.n_layers, 0
            cfg.injection, cfg.init_state = "none", "input"
        else:
            cfg.n_layers = cfg.n_layers or 4
        for name in ("injection", "init_state", "block_norm", "adapter_init"):
            allowed = {"injection": ("concat", "add", "none"), "init_state": ("random", "zeros", "input"),
                       "block_norm": ("pre", "post", "sandwich"), "adapter_init": ("normal", "passthrough")}[name]
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"--model.{name}: got '{getattr(cfg, name)}'; expected one of {', '.join(allowed)}")
        if cfg.default_num_steps < 1:
            raise ValueError(f"--model.default_num_steps must be >= 1, got {cfg.default_num_steps}")
        return cfg

    def _resolve_loop_split(self) -> None:
        parts = (self.n_prelude, self.n_core, self.n_coda)
        if all(p is not None for p in parts):
            total = sum(parts)
            if self.n_layers is not None and self.n_layers != total:
                raise ValueError(
                    f"--model.n_prelude + n_core + n_coda = {parts[0]}+{parts[1]}+{parts[2]} = {total} "
                    f"does not match --model.n_layers {self.n_layers}")
            self.n_layers = total
        elif any(p is not None for p in parts):
            raise ValueError("--model.n_prelude, n_core and n_coda must be given together (or none, to derive them)")
        else:
            # Default split keeps ~1/6 of the layers in each of prelude and coda (Huginn: 2/4/2 of 8).
            n = self.n_layers or 4
            edge = max(1, round(n / 6))
            if n < 3:
                raise ValueError(f"--model.n_layers {n}: a recurrent model needs at least 3 layers (prelude, core, coda)")
            self.n_layers, self.n_prelude, self.n_core, self.n_coda = n, edge, n - 2 * edge, edge
        if self.n_core < 1:
            raise ValueError(f"--model.n_core must be >= 1, got {self.n_core}")
        if min(self.n_prelude, self.n_coda) < 0:
            raise ValueError("--model.n_prelude and --model.n_coda must be >= 0")
