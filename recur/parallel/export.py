"""Consolidate any training checkpoint (DCP of any world size, or DeepSpeed ZeRO 1/2/3) into the one model
format, a Hugging Face directory (recur/hf_model.py), for single-device evaluation and sharing.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from recur.checkpoint import STATE_FILE, checkpoint_format, checkpoint_problem
from recur.eval.load import load_model, model_config_from_dict, resolve_checkpoint, run_data, tied_aliases
from recur.hf_model import is_saved_dir
from recur.run_dir import RunDir


def consolidated_state_dict(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(full fp32 model state dict on CPU, model config dict, the checkpoint directory used)."""
    path = resolve_checkpoint(checkpoint)
    if path.is_file() or is_saved_dir(path):
        raise ValueError(f"--checkpoint: {path} is already an exported model")
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"--checkpoint: {path} is not a complete checkpoint: {problem}")
    state = json.loads((path / STATE_FILE).read_text())
    cfg = model_config_from_dict(state.get("model_config"), str(path / STATE_FILE))
    if checkpoint_format(path) == "deepspeed":
        from recur.parallel.deepspeed import zero_fp32_state_dict

        weights = zero_fp32_state_dict(path)
    else:
        model, _, _ = load_model(path)
        weights = model.state_dict()
    return {k: v.detach().float().cpu() for k, v in weights.items()}, asdict(cfg), path


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the checkpoint as a Hugging Face directory (recur.hf_model.save_pretrained) with the run's
    tokenizer files; returns the directory."""
    from recur.convert.hf import tokenizer_files
    from recur.data.tokenizer import load_tokenizer
    from recur.hf_model import save_pretrained
    from recur.models import create_model

    weights, model_config, source = consolidated_state_dict(checkpoint)
    model = create_model(model_config_from_dict(model_config, str(source)))
    model.load_state_dict({**weights, **tied_aliases(model, weights)})
    # The run's tokenizer ("byte" or a directory), when it is on record.
    spec, _ = run_data(RunDir.of_checkpoint(source))
    extra, special = [], {}
    if spec is not None:
        tok = load_tokenizer(spec)
        special = {"bos": tok.bos_id, "eos": tok.eos_id, "pad": tok.pad_id}
        extra = [f for f in tokenizer_files(spec) if f.name != "generation_config.json"] if spec != "byte" else []
    return save_pretrained(
        model,
        out_dir,
        extra_files=extra,
        special_ids=special,
        overwrite=overwrite,
        tokenizer="byte" if spec == "byte" else None,
    )
