"""Named model sizes. A preset fixes the shape; the variant decides how the layers are used.

Counts are documented in README ("Model presets"); `python -m recur.models.presets` prints them.
"""

from __future__ import annotations

from dataclasses import fields, replace

from recur.models.config import ModelConfig

GPT2_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64 for tensor-core friendly shapes

PRESETS: dict[str, dict] = {
    # CPU-sized model of the embedded default run (byte tokenizer, short sequences).
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=256, vocab_size=320),
    "nano": dict(d_model=512, n_layers=6, n_heads=8, max_seq_len=1024, vocab_size=GPT2_VOCAB),
}


def preset_config(size: str, variant: str = "recurrent", **overrides) -> ModelConfig:
    """ModelConfig for a named size and variant; keyword overrides win over the preset."""
    if size not in PRESETS:
        raise ValueError(f"--model_size: unknown size '{size}'; expected one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown model fields {sorted(unknown)}")
    return replace(ModelConfig(), variant=variant, **{**PRESETS[size], **overrides})
