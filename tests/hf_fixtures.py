"""Tiny random-init Hugging Face causal LMs saved to disk with a real tokenizer, built offline.

Shared by the layer-analysis and converter tests: each builder returns a directory that
``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)`` load.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_hf_tokenizer import build_tiny_hf_tokenizer

# The tiny BPE tokenizer below has 400 entries; the models' vocabulary must cover them.
TINY_VOCAB = 400


def make_tiny_tokenizer(path: Path) -> Path:
    """Byte-level BPE (400 tokens, pad/bos/eos specials) saved into ``path``; encodes any text."""
    Path(path).mkdir(parents=True, exist_ok=True)
    return build_tiny_hf_tokenizer(Path(path))


def _save(model: torch.nn.Module, path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    make_tiny_tokenizer(path)
    return path


def _small_dims() -> dict[str, int]:
    return dict(
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=TINY_VOCAB,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )


def make_tiny_llama(tmp_path: Path, n_layers: int = 6, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=n_layers, **_small_dims()))
    return _save(model, Path(tmp_path) / f"tiny_llama_{n_layers}")


def make_tiny_olmo2(tmp_path: Path, n_layers: int = 4, seed: int = 0) -> Path:
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    model = Olmo2ForCausalLM(Olmo2Config(num_hidden_layers=n_layers, **_small_dims()))
    return _save(model, Path(tmp_path) / f"tiny_olmo2_{n_layers}")
