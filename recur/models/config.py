"""Model configuration: one dataclass describes every variant of the ladder."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

VARIANTS = ("baseline", "recurrent", "shared_loop", "latent", "act", "ssm", "ssm_mem")  # built into this version
# Variants added at run time through recur.models.register_variant (their classes: recur.models.MODEL_CLASSES).
REGISTERED_VARIANTS: list[str] = []
LOOPED_VARIANTS = ("recurrent", "shared_loop")
LOOPED_BLOCK_NORM = "sandwich"  # see docs/recurrence.md for the ablation that chose it


def known_variants() -> tuple[str, ...]:
    """The built-in variants, then the registered ones: the values --model.variant accepts."""
    return VARIANTS + tuple(REGISTERED_VARIANTS)


def _check_int(flag: str, value: object, low: int) -> None:
    # bool is an int subclass; True as a width is a typo, not a 1.
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")


def _check_number(flag: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{flag} must be a number, got {value!r}")


@dataclass
class LatentConfig:
    """latent / act / ssm / ssm_mem: the thought stream (recur/models/latent.py). None = derived."""

    n_thoughts: int = 16  # Z learned thought tokens per chunk
    d_thought: int | None = None  # width of the thought stream; None = d_model
    thought_heads: int | None = None  # attention heads of the thought core; None = n_heads
    thought_chunk: int = 16  # positions per chunk of thoughts (1 = exact per-position thoughts)
    read_layer: int | None = None  # token blocks before the thought loop (the rest run after it); None = n_layers // 2

    def resolved(self, model: ModelConfig) -> LatentConfig:
        cfg = replace(
            self,
            d_thought=model.d_model if self.d_thought is None else self.d_thought,
            thought_heads=model.n_heads if self.thought_heads is None else self.thought_heads,
            read_layer=model.n_layers // 2 if self.read_layer is None else self.read_layer,
        )
        for name in ("n_thoughts", "d_thought", "thought_heads", "thought_chunk"):
            _check_int(f"--model.latent.{name}", getattr(cfg, name), 1)
        _check_int("--model.latent.read_layer", cfg.read_layer, 0)
        if cfg.read_layer > model.n_layers:
            raise ValueError(f"--model.latent.read_layer {cfg.read_layer} exceeds --model.n_layers {model.n_layers}")
        if cfg.d_thought % cfg.thought_heads:
            raise ValueError(
                f"--model.latent.d_thought {cfg.d_thought} is not divisible by "
                f"--model.latent.thought_heads {cfg.thought_heads}"
            )
        return cfg


@dataclass
class ActConfig:
    """act: adaptive halting of the thought stream (recur/models/act.py)."""

    threshold: float = 0.99  # cumulative halting probability that stops a unit
    min_steps: int = 1  # no halting before this many iterations (ReLSM used 2)
    max_steps: int = 8  # iterations when forward() is not given num_steps
    lambda_ponder: float = 0.01  # weight of the ponder cost N + R in aux_loss
    halt_bias: float = -1.0  # initial bias of the halting head: sigmoid(-1) = 0.27 -> ~4 steps at init

    def resolved(self, model: ModelConfig) -> ActConfig:
        for name in ("threshold", "lambda_ponder", "halt_bias"):
            _check_number(f"--model.act.{name}", getattr(self, name))
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"--model.act.threshold must be in [0, 1], got {self.threshold}")
        if self.lambda_ponder < 0:
            raise ValueError(f"--model.act.lambda_ponder must be >= 0, got {self.lambda_ponder}")
        for name in ("min_steps", "max_steps"):
            _check_int(f"--model.act.{name}", getattr(self, name), 1)
        if self.min_steps > self.max_steps:
            raise ValueError(f"--model.act.min_steps {self.min_steps} exceeds --model.act.max_steps {self.max_steps}")
        return replace(self)


@dataclass
class SSMConfig:
    """ssm / ssm_mem: the Mamba-2 token blocks (recur/models/ssm.py)."""

    d_state: int = 64  # SSM state size per head
    headdim: int = 64  # channels per SSM head
    expand: int = 2  # inner width = expand · d_model
    d_conv: int = 4  # causal depthwise conv kernel
    scan_chunk: int = 64  # SSD chunk length

    def resolved(self, model: ModelConfig) -> SSMConfig:
        for f in fields(self):
            _check_int(f"--model.ssm.{f.name}", getattr(self, f.name), 1)
        if self.expand * model.d_model % self.headdim:
            raise ValueError(
                f"--model.ssm.headdim {self.headdim} must divide --model.ssm.expand·d_model "
                f"= {self.expand * model.d_model}"
            )
        return replace(self)


@dataclass
class MemoryConfig:
    """ssm_mem: attention memory between the prelude and the thoughts (recur/models/ssm_lm.py)."""

    n_slots: int = 64  # memory slots per chunk
    chunk: int = 64  # positions per chunk of memory

    def resolved(self, model: ModelConfig) -> MemoryConfig:
        for f in fields(self):
            _check_int(f"--model.memory.{f.name}", getattr(self, f.name), 1)
        return replace(self)


# The variant groups of ModelConfig and the variants that read each; a group set for any other variant is an
# error, since that variant would ignore it silently.
GROUPS: dict[str, type] = {"latent": LatentConfig, "act": ActConfig, "ssm": SSMConfig, "memory": MemoryConfig}
GROUP_READERS: dict[str, tuple[str, ...]] = {
    "latent": ("latent", "act", "ssm", "ssm_mem"),
    "act": ("act",),
    "ssm": ("ssm", "ssm_mem"),
    "memory": ("ssm_mem",),
}
# Checkpoints and config.json written before the groups existed kept these knobs in one `extra` dict.
LEGACY_EXTRA: dict[str, tuple[str, str]] = {
    **{k: ("latent", k) for k in ("n_thoughts", "d_thought", "thought_heads", "thought_chunk", "read_layer")},
    **{k: ("act", k) for k in ("threshold", "min_steps", "max_steps", "lambda_ponder", "halt_bias")},
    **{f"ssm_{k}": ("ssm", k) for k in ("d_state", "headdim", "expand", "d_conv", "scan_chunk")},
    "n_memory": ("memory", "n_slots"),
    "memory_chunk": ("memory", "chunk"),
}


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
    adapter_init: str = "normal"  # normal | passthrough (adapter copies the prelude output: retrofitting) | state
    init_state: str = "random"  # random | zeros | input (state starts as the prelude output)
    # Small against the unit-RMS prelude output: with std 1 the adapter first sees mostly noise in the state
    # half and learns to ignore the state, after which every iteration recomputes the same thing.
    init_state_std: float = 0.02
    state_norm: bool = False  # RMSNorm on the state after every iteration (stabilises very deep loops)
    default_num_steps: int = 4  # recurrence used when forward() is not told num_steps
    # Variant groups (GROUP_READERS says which variants read each); every model serialises all of them.
    latent: LatentConfig = field(default_factory=LatentConfig)
    act: ActConfig = field(default_factory=ActConfig)
    ssm: SSMConfig = field(default_factory=SSMConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A saved config (JSON/YAML dict): groups are dicts, and a legacy `extra` dict is mapped into them."""
        data = upgrade_legacy(data, data.get("variant", cls.variant))
        groups = {name: dict(data.pop(name, None) or {}) for name in GROUPS}
        for name, values in groups.items():
            unknown = sorted(set(values) - {f.name for f in fields(GROUPS[name])})
            if unknown:
                raise ValueError(f"--model.{name}: unknown keys {unknown}")
        return cls(**data, **{name: GROUPS[name](**values) for name, values in groups.items()})

    def resolved(self) -> ModelConfig:
        """Return a copy with every derived field filled in and the whole config validated: every rejected
        value is a ValueError naming its --model.* flag (validate_config runs this before anything is written)."""
        if self.variant not in known_variants():
            raise ValueError(
                f"--model.variant: unknown variant '{self.variant}'; expected one of {', '.join(known_variants())}"
            )
        cfg = replace(self)
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
            allowed = {
                "injection": ("concat", "add", "none"),
                "init_state": ("random", "zeros", "input"),
                "block_norm": ("pre", "post", "sandwich"),
                "adapter_init": ("normal", "passthrough", "state"),
            }[name]
            if getattr(cfg, name) not in allowed:
                raise ValueError(f"--model.{name}: got '{getattr(cfg, name)}'; expected one of {', '.join(allowed)}")
        if cfg.default_num_steps < 1:
            raise ValueError(f"--model.default_num_steps must be >= 1, got {cfg.default_num_steps}")
        cfg._resolve_groups()
        return cfg

    def _resolve_groups(self) -> None:
        for name, group_class in GROUPS.items():
            group = getattr(self, name)
            if not isinstance(group, group_class):  # e.g. a dict from ModelConfig(latent={...})
                raise ValueError(f"--model.{name}: expected a {group_class.__name__}, got {type(group).__name__}")
            if self.variant in GROUP_READERS[name]:
                setattr(self, name, group.resolved(self))
                continue
            changed = [f.name for f in fields(group) if getattr(group, f.name) != getattr(group_class(), f.name)]
            if changed:
                raise ValueError(
                    f"--model.{name}.{changed[0]}: variant '{self.variant}' does not read --model.{name} "
                    f"(read by {', '.join(GROUP_READERS[name])})"
                )
            setattr(self, name, replace(group))  # the copy shares no group with the original

    def _resolve_loop_split(self) -> None:
        parts = (self.n_prelude, self.n_core, self.n_coda)
        if all(p is not None for p in parts):
            total = sum(parts)
            if self.n_layers is not None and self.n_layers != total:
                raise ValueError(
                    f"--model.n_prelude + n_core + n_coda = {parts[0]}+{parts[1]}+{parts[2]} = {total} "
                    f"does not match --model.n_layers {self.n_layers}"
                )
            self.n_layers = total
        elif any(p is not None for p in parts):
            raise ValueError("--model.n_prelude, n_core and n_coda must be given together (or none, to derive them)")
        else:
            # Default split keeps ~1/6 of the layers in each of prelude and coda (Huginn: 2/4/2 of 8).
            n = self.n_layers or 4
            edge = max(1, round(n / 6))
            if n < 3:
                raise ValueError(
                    f"--model.n_layers {n}: a recurrent model needs at least 3 layers (prelude, core, coda)"
                )
            self.n_layers, self.n_prelude, self.n_core, self.n_coda = n, edge, n - 2 * edge, edge
        if self.n_core < 1:
            raise ValueError(f"--model.n_core must be >= 1, got {self.n_core}")
        if min(self.n_prelude, self.n_coda) < 0:
            raise ValueError("--model.n_prelude and --model.n_coda must be >= 0")


def legacy_groups(variant: str, extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An old `extra` dict as group values ({"ssm_headdim": 32} -> {"ssm": {"headdim": 32}}); a key that the
    variant never read is refused, as the old models refused it."""
    readable = {key for key, (group, _) in LEGACY_EXTRA.items() if variant in GROUP_READERS[group]}
    unknown = sorted(set(extra) - readable)
    if unknown:
        raise ValueError(
            f"--model.extra: unknown keys {unknown} for variant '{variant}'"
            + (f"; expected some of {', '.join(sorted(readable))}" if readable else "")
        )
    groups: dict[str, dict[str, Any]] = {}
    for key, value in extra.items():
        group, name = LEGACY_EXTRA[key]
        groups.setdefault(group, {})[name] = value
    return groups


def upgrade_legacy(model: dict[str, Any], variant: str) -> dict[str, Any]:
    """A copy of a saved model config with its legacy `extra` mapped into the group dicts (explicit group
    values win); a config without `extra` comes back unchanged."""
    model = dict(model)
    for group, values in legacy_groups(variant, model.pop("extra", None) or {}).items():
        model[group] = {**values, **(model.get(group) or {})}
    return model


def saved_keys() -> set[str]:
    """Top-level keys a saved model config may have: the fields, and the legacy `extra`."""
    return {f.name for f in fields(ModelConfig)} | {"extra"}


def flat_fields(obj: object, prefix: str = "") -> dict[str, Any]:
    """{"model.latent.n_thoughts": 16, ...}: a dataclass's leaves under dotted names (parser defaults)."""
    flat: dict[str, Any] = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            flat.update(flat_fields(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat
