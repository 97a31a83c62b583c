"""Provenance of an evaluation: commit, time, checkpoint, model and decoding settings."""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch

from recur.eval.load import CheckpointMeta
from recur.eval.schema import GRID_VERSION
from recur.models import is_looped
from recur.models.lm import DecoderLM

REPO = Path(__file__).resolve().parents[2]
BASELINE_DEPTH_NOTE = (
    "baseline has no recurrence: num_steps is ignored (every depth runs the same network), "
    "so it is evaluated once, reported at depth 1"
)


def git_commit() -> tuple[str, bool | None]:
    """(commit hash, whether the tree has uncommitted changes); ("unknown", None) outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown", None
    return commit, bool(dirty)


def depth_note(model: DecoderLM) -> str | None:
    return None if model.uses_depth else BASELINE_DEPTH_NOTE


def effective_depths(model: DecoderLM, depths: list[int]) -> list[int]:
    """The depths worth evaluating: all of them, or [1] for a model that ignores the depth (baseline)."""
    return list(depths) if model.uses_depth else [1]


def metadata(
    model: DecoderLM, checkpoint: CheckpointMeta, tokenizer: str, seed: int, depths: list[int], decoding: dict
) -> dict:
    commit, dirty = git_commit()
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit,
        "commit_dirty": dirty,
        "seed": seed,
        "grid_version": GRID_VERSION,
        "device": str(next(model.parameters()).device),
        "checkpoint": {k: v for k, v in asdict(checkpoint).items() if k != "tokenizer"},
        "model": {
            "variant": model.cfg.variant,
            "params": sum(p.numel() for p in model.parameters()),
            "config": asdict(model.cfg),
            "looped": is_looped(model),
        },
        "tokenizer": tokenizer,
        "depths": list(depths),
        "depth_note": depth_note(model),
        "decoding": decoding,
    }


def decoding_params(max_new_tokens: int | None, stop_ids: set[int], exit_rule: dict | None = None) -> dict:
    return {
        "strategy": "greedy",
        "max_new_tokens": max_new_tokens if max_new_tokens is not None else "answer_length+8",
        "stop_ids": sorted(stop_ids),
        "kv_cache": True,
        "exit_rule": exit_rule,
    }


def check_depths(depths: list[int], flag: str = "--num_steps") -> list[int]:
    if not depths:
        raise ValueError(f"{flag}: expected at least one depth")
    bad = [d for d in depths if not isinstance(d, int) or d <= 0]
    if bad:
        raise ValueError(f"{flag}: every depth must be an integer >= 1, got {bad}")
    return sorted(set(depths))


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
