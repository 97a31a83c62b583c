"""Model zoo: `create_model(cfg)` builds any variant from a ModelConfig."""

from __future__ import annotations

from torch import nn

from recur.models.act import ActLM
from recur.models.baseline import BaselineLM
from recur.models.config import VARIANTS, ModelConfig
from recur.models.lm import DecoderLM, ModelOutput
from recur.models.latent import LatentLM
from recur.models.looped import LoopedLM
from recur.models.presets import PRESETS, preset_config
from recur.models.ssm_lm import SSMLM, SSMMemLM

MODEL_CLASSES: dict[str, type[DecoderLM]] = {
    "baseline": BaselineLM,
    "recurrent": LoopedLM,
    "shared_loop": LoopedLM,
    "latent": LatentLM,
    "act": ActLM,
    "ssm": SSMLM,
    "ssm_mem": SSMMemLM,
}


def create_model(cfg: ModelConfig | str, variant: str | None = None, **overrides) -> DecoderLM:
    """Build a model from a config, or from a preset name: create_model("nano", "recurrent")."""
    if isinstance(cfg, str):
        cfg = preset_config(cfg, variant or "recurrent", **overrides)
    cfg = cfg.resolved()
    if cfg.variant not in MODEL_CLASSES:
        raise ValueError(f"--model.variant '{cfg.variant}' is not built into this version; "
                         f"available: {', '.join(MODEL_CLASSES)}")
    return MODEL_CLASSES[cfg.variant](cfg)


def is_looped(model: nn.Module) -> bool:
    return isinstance(model, LoopedLM)


__all__ = ["VARIANTS", "PRESETS", "ModelConfig", "ModelOutput", "DecoderLM", "create_model", "preset_config", "is_looped"]
