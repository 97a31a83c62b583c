"""Split a model's parameters into optimizer groups (weight decay / no decay / Muon)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from recur.optim.config import OptimConfig

# Substrings of parameter names that never get weight decay (decaying a gain or a lookup table towards
# zero only fights the model) and, for the embedding / output head, never get Muon: an embedding row is
# updated only for tokens that occur, and the head's rows are per-token classifiers, so neither is a
# "hidden" linear map that orthogonalisation is meant for.
_NO_DECAY_NAMES = ("embeddings", "norm")
_NOT_MUON_NAMES = ("embeddings", "lm_head", "norm")


def is_no_decay(name: str, param: torch.Tensor, is_embedding: bool = False) -> bool:
    """Norm gains, biases (every 1-D tensor) and embeddings are excluded from weight decay."""
    return is_embedding or param.ndim < 2 or any(key in name for key in _NO_DECAY_NAMES)


def is_muon_matrix(name: str, param: torch.Tensor, is_embedding: bool = False) -> bool:
    """Muon takes 2-D hidden matrices only: not embeddings, not the lm head, not norms."""
    return not is_embedding and param.ndim == 2 and not any(key in name for key in _NOT_MUON_NAMES)


def _embedding_params(model: nn.Module) -> set[int]:
    """ids of nn.Embedding weights, so embeddings are recognised whatever their attribute is called."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """Parameter groups for `cfg.name`; every group carries `lr_scale` (see `recur.optim.set_lr`).

    Frozen parameters (requires_grad=False) are deliberately left out: nothing would update them.
    Tied weights appear once (named_parameters de-duplicates by identity), under the first name.
    Groups with no parameters are dropped. Muon groups carry `use_muon=True`.
    """
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    muon: list[torch.Tensor] = []
    embeddings = _embedding_params(model)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_embedding = id(param) in embeddings
        if cfg.name == "muon" and is_muon_matrix(name, param, is_embedding):
            muon.append(param)
        elif is_no_decay(name, param, is_embedding):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": muon, "weight_decay": cfg.weight_decay, "lr_scale": cfg.muon_lr_scale, "use_muon": True},
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    groups = [group for group in groups if group["params"]]
    if not groups:
        raise ValueError(f"optimizer: model {type(model).__name__} has no trainable parameters")
    return groups
