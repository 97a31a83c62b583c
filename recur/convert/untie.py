"""Untie the input embedding and the LM head of a local Hugging Face checkpoint.

A recurrent model converted from a tied checkpoint and trained untied has an extra vocab x d matrix; the
fair non-recurrent baseline gets the same freedom. The head becomes a copy of the embedding, so the
untied model computes exactly what the tied one did. Works on the files (safetensors, single or
sharded), so it does not depend on the installed transformers version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from recur.atomic import atomic_dir
from recur.convert.hf import read_hf_config

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
HEAD_SHARD = "model-lm_head.safetensors"


def untie_hf_checkpoint(model_path: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Copy `model_path` to `out_dir` with an independent lm_head and tie_word_embeddings = false."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src, out = Path(model_path), Path(out_dir)
    config = read_hf_config(src)
    if not config.get("tie_word_embeddings", False):
        raise ValueError(f"--model_path {src}: tie_word_embeddings is already false (nothing to untie)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out}: already exists (pass --overwrite to replace it)")
    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if not single.is_file() and not index.is_file():
        raise FileNotFoundError(f"--model_path {src}: needs model.safetensors or model.safetensors.index.json")
    with atomic_dir(out) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if single.is_file():
            state = load_file(str(single))
            state[HEAD] = state[EMBED].clone()
            save_file(state, str(tmp / single.name), metadata={"format": "pt"})
        else:
            # Sharded: the head goes into its own shard, listed in the index; the other shards stay as they are.
            weight_map = json.loads(index.read_text())
            embed_shard = src / weight_map["weight_map"][EMBED]
            with safe_open(str(embed_shard), "pt") as f:
                head = f.get_tensor(EMBED).clone()
            save_file({HEAD: head}, str(tmp / HEAD_SHARD), metadata={"format": "pt"})
            weight_map["weight_map"][HEAD] = HEAD_SHARD
            if "metadata" in weight_map and "total_size" in weight_map["metadata"]:
                weight_map["metadata"]["total_size"] += head.numel() * head.element_size()
            (tmp / index.name).write_text(json.dumps(weight_map, indent=2) + "\n")
        config["tie_word_embeddings"] = False
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
