"""Model zoo: `create_model(cfg)` builds any variant from a ModelConfig.

A variant is a DecoderLM subclass that implements the model contract (recur/models/lm.py: trunk,
block_lists, param_parts, flop_terms); nothing outside recur/models knows variants by name. The
built-in ones are listed below; `register_variant` adds another (e.g. from a plugin or a test) without
editing this package.
"""

from __future__ import annotations

from torch import nn

from recur.models.config import REGISTERED_VARIANTS, VARIANTS, ModelConfig, known_variants
from recur.models.factory import MODEL_CLASSES, build_model
from recur.models.lm import DecoderLM, ModelOutput
from recur.models.looped import LoopedLM
from recur.models.presets import PRESETS, preset_config


def create_model(cfg: ModelConfig | str, variant: str | None = None, **overrides) -> DecoderLM:
    """Build a model from a config, or from a preset name: create_model("nano", "recurrent")."""
    if isinstance(cfg, str):
        cfg = preset_config(cfg, variant or "recurrent", **overrides)
    return build_model(cfg)


def register_variant(name: str, model_class: type[DecoderLM]) -> None:
    """Make `--model.variant name` build `model_class` (a DecoderLM implementing the model contract). Its
    config reads no variant group, so the shared ModelConfig fields (n_layers, d_model, ...) shape it."""
    if name in known_variants():
        raise ValueError(f"variant '{name}' already exists")
    if not issubclass(model_class, DecoderLM):
        raise TypeError(f"variant '{name}': {model_class.__name__} is not a DecoderLM")
    MODEL_CLASSES[name] = model_class
    REGISTERED_VARIANTS.append(name)


def unregister_variant(name: str) -> None:
    """Undo register_variant (built-in variants stay)."""
    if name not in REGISTERED_VARIANTS:
        raise ValueError(f"variant '{name}' was not registered")
    REGISTERED_VARIANTS.remove(name)
    del MODEL_CLASSES[name]


def is_looped(model: nn.Module) -> bool:
    return isinstance(model, LoopedLM)


__all__ = [
    "VARIANTS",
    "PRESETS",
    "ModelConfig",
    "ModelOutput",
    "DecoderLM",
    "create_model",
    "preset_config",
    "is_looped",
    "known_variants",
    "register_variant",
    "unregister_variant",
]
