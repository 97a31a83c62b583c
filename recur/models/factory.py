"""The variant registry: which DecoderLM class builds each ModelConfig.variant (recur.models.create_model
adds preset names on top)."""

from __future__ import annotations

from recur.models.act import ActLM
from recur.models.baseline import BaselineLM
from recur.models.config import ModelConfig
from recur.models.latent import LatentLM
from recur.models.lm import DecoderLM
from recur.models.looped import LoopedLM
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


def build_model(cfg: ModelConfig) -> DecoderLM:
    """The model of `cfg` (resolved first)."""
    cfg = cfg.resolved()
    if cfg.variant not in MODEL_CLASSES:
        raise ValueError(
            f"--model.variant '{cfg.variant}' is not built into this version; available: {', '.join(MODEL_CLASSES)}"
        )
    return MODEL_CLASSES[cfg.variant](cfg)
