"""Model zoo: `create_model(cfg)` builds any variant from a ModelConfig."""

from __future__ import annotations

from torch import nn

from recur.models.config import VARIANTS, ModelConfig
from recur.models.factory import MODEL_CLASSES, build_model
from recur.models.lm import DecoderLM, ModelOutput
from recur.models.looped import LoopedLM
from recur.models.presets import PRESETS, preset_config


def create_model(cfg: ModelConfig | str, variant: str | None = None, **overrides) -> DecoderLM:
    """Build a model from a config, or from a preset name: create_model("nano", "recurrent")."""
    if isinstance(cfg, str):
        cfg = preset_config(cfg, variant or "recurrent", **overrides)
    return build_model(cfg)


def is_looped(model: nn.Module) -> bool:
    return isinstance(model, LoopedLM)


__all__ = ["VARIANTS", "PRESETS", "ModelConfig", "ModelOutput", "DecoderLM", "create_model", "preset_config", "is_looped"]
