"""Consolidate any training checkpoint (DCP of any world size, or DeepSpeed ZeRO 1/2/3) into one file set
for single-device evaluation: `model.pt` ({"model": state_dict, "model_config": dict}), `model.safetensors`
(model_config in its metadata) and `config.json` ({"model_config": ...}); `recur.eval.load` reads all three.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from recur.checkpoint import DEEPSPEED_DIR, STATE_FILE, checkpoint_format, checkpoint_problem
from recur.eval.load import model_config_from_dict, resolve_checkpoint


def consolidated_state_dict(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(full fp32 model state dict on CPU, model config dict, the checkpoint directory used)."""
    path = resolve_checkpoint(checkpoint)
    if path.is_file():
        raise ValueError(f"--checkpoint: {path} is already an exported file")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--checkpoint: {path} is not a complete checkpoint: {problem}")
    state = json.loads((path / STATE_FILE).read_text())
    cfg = model_config_from_dict(state.get("model_config"), str(path / STATE_FILE))
    if checkpoint_format(path) == "deepspeed":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        from recur.parallel.deepspeed import TAG

        weights = get_fp32_state_dict_from_zero_checkpoint(str(path / DEEPSPEED_DIR), tag=TAG)
    else:
        from recur.eval.load import load_model

        model, _, _ = load_model(path)
        weights = model.state_dict()
    return {k: v.detach().float().cpu() for k, v in weights.items()}, asdict(cfg), path


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Write model.pt, model.safetensors and config.json into `out_dir`; returns their paths."""
    from safetensors.torch import save_file

    weights, model_config, source = consolidated_state_dict(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"pt": out / "model.pt", "safetensors": out / "model.safetensors", "config": out / "config.json"}
    _atomic(files["pt"], lambda tmp: torch.save({"model": weights, "model_config": model_config}, tmp))
    # safetensors stores no aliases: a tied head is dropped (the loader re-ties it from the embeddings).
    single = {k: v.contiguous() for k, v in weights.items()
              if not (model_config.get("tie_embeddings") and k == "lm_head.weight")}
    _atomic(files["safetensors"], lambda tmp: save_file(single, str(tmp), metadata={
        "model_config": json.dumps(model_config), "source": str(source)}))
    _atomic(files["config"], lambda tmp: tmp.write_text(json.dumps({"model_config": model_config}, indent=2)))
    return files
