"""Named model sizes. A preset fixes the shape; the variant decides how the layers are used.

Every preset but `tiny` uses the GPT-2 vocabulary padded to 50304, tied embeddings and SwiGLU with
hidden width 8/3·d_model rounded up to 64 unless stated. A name refers to one of two counts, given in
`NAMED_COUNT`: "total" (all parameters, tied embedding counted once) or "non_embedding" (total minus the
embedding matrix). `python utils/param_counter.py --presets` prints both counts for every preset × variant.

- 300M and 350M share the shape 1024×24 (as in ReLSM, where they differ only in dropout): 350M is named
  by its total count (355M), 300M by its non-embedding count (303M), and 300M keeps ReLSM's ladder
  dropout 0.05.
- 1B-16k is 1B with 16k context and grouped-query attention (4 KV heads). GQA removes 6.3M parameters
  per layer, so its FFN is widened to 6144 to keep the 1B budget; RoPE base 500000 for the long context.
- Looped variants reuse the same n_layers: `recurrent` splits them prelude/core/coda ≈ 1/6, 4/6, 1/6
  (nano: 1/4/1), `shared_loop` loops all of them; latent/act/ssm/ssm_mem put the thought loop after
  n_layers // 2 token blocks and add its own parameters.
"""

from __future__ import annotations

from dataclasses import fields, replace

from recur.models.config import VARIANTS, ModelConfig

GPT2_VOCAB = 50304  # GPT-2's 50257 padded to a multiple of 64 for tensor-core friendly shapes

PRESETS: dict[str, dict] = {
    # CPU-sized model of the embedded default run (byte tokenizer, short sequences).
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, max_seq_len=256, vocab_size=320),
    "nano": dict(d_model=512, n_layers=6, n_heads=8, max_seq_len=1024, vocab_size=GPT2_VOCAB),
    "50M": dict(d_model=512, n_layers=8, n_heads=8, max_seq_len=1024, vocab_size=GPT2_VOCAB),
    "125M": dict(d_model=768, n_layers=12, n_heads=12, max_seq_len=1024, vocab_size=GPT2_VOCAB),
    "300M": dict(d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024, vocab_size=GPT2_VOCAB, dropout=0.05),
    "350M": dict(d_model=1024, n_layers=24, n_heads=16, max_seq_len=1024, vocab_size=GPT2_VOCAB),
    "760M": dict(d_model=1280, n_layers=36, n_heads=20, max_seq_len=1024, vocab_size=GPT2_VOCAB),
    "1B": dict(d_model=2048, n_layers=18, n_heads=16, d_ff=5504, max_seq_len=1024, vocab_size=GPT2_VOCAB, dropout=0.05),
    "1B-16k": dict(
        d_model=2048,
        n_layers=18,
        n_heads=16,
        n_kv_heads=4,
        d_ff=6144,
        max_seq_len=16384,
        rope_theta=500000.0,
        vocab_size=GPT2_VOCAB,
        dropout=0.05,
    ),
}

# (target parameters, which count the name refers to); tiny is not a named size.
NAMED_COUNT: dict[str, tuple[float, str]] = {
    "nano": (18e6, "non_embedding"),
    "50M": (50e6, "total"),
    "125M": (125e6, "total"),
    "300M": (300e6, "non_embedding"),
    "350M": (350e6, "total"),
    "760M": (760e6, "total"),
    "1B": (1e9, "total"),
    "1B-16k": (1e9, "total"),
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


def preset_counts(size: str, variant: str) -> dict[str, int]:
    """Exact total and non-embedding counts, built on the meta device (no memory is allocated)."""
    import torch

    from recur.flops import count_params
    from recur.models.factory import build_model

    with torch.device("meta"):
        model = build_model(preset_config(size, variant))
    return count_params(model)


def preset_table(variants: tuple[str, ...] = VARIANTS, exact: bool = False) -> str:
    """Markdown table: per preset, the named count and total / non-embedding parameters per variant
    (millions, or exact integers with `exact`)."""
    header = "| size | shape | name counts | " + " | ".join(variants) + " |"
    lines = [header, "|" + "---|" * (3 + len(variants))]
    for size, shape in PRESETS.items():
        target = NAMED_COUNT.get(size)
        named = f"{target[1]} ≈ {target[0] / 1e6:g}M" if target else "—"
        cells = []
        for variant in variants:
            counts = preset_counts(size, variant)
            total, non_embedding = counts["total"], counts["non_embedding"]
            cells.append(
                f"{total:,} / {non_embedding:,}" if exact else f"{total / 1e6:.1f} / {non_embedding / 1e6:.1f}"
            )
        kv = f", kv {shape['n_kv_heads']}" if "n_kv_heads" in shape else ""
        lines.append(
            f"| {size} | {shape['d_model']}×{shape['n_layers']}, {shape['n_heads']} heads{kv}, "
            f"ctx {shape['max_seq_len']} | {named} | " + " | ".join(cells) + " |"
        )
    unit = "exact" if exact else "millions"
    return "\n".join(lines) + f"\n\nCells: total / non-embedding parameters, {unit}.\n"
