"""Evaluation inside the training loop: accuracy per (task, depth) and held-out loss per depth.

Appends one record per call to <run>/eval.jsonl, refreshes <run>/accuracy.png from the whole file (so a
resumed run keeps its history), and returns flat metrics for wandb/metrics.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

from recur.config import TrainConfig
from recur.data.tokenizer import Tokenizer
from recur.eval.algorithmic import accuracy_grid
from recur.eval.meta import effective_depths
from recur.eval.perplexity import heldout_loss
from recur.eval.plots import plot_training_eval
from recur.models.lm import DecoderLM
from recur.run_dir import RunDir


def validation_path(cfg: TrainConfig, run_dir: Path) -> Path | None:
    """The held-out set: --data.val_path, or the one generated with the run's built-in data."""
    if cfg.data.val_path:
        return Path(cfg.data.val_path)
    generated = RunDir(run_dir).val_data
    return generated if (generated / "manifest.json").is_file() else None


def read_eval_records(run_dir: Path) -> list[dict]:
    """Records of eval.jsonl, one per step (a step evaluated again after a resume keeps its last record)."""
    path = RunDir(run_dir).eval_log
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_step[record["step"]] = record
    return [by_step[s] for s in sorted(by_step)]


def evaluate_during_training(
    model: DecoderLM, tokenizer: Tokenizer, cfg: TrainConfig, step: int, run_dir: Path, write: bool = True
) -> dict:
    """{"step", "accuracy": {"<task>@r<d>": acc}, "val_loss": {"r<d>": loss} | None, "metrics": flat dict}.

    Depths: --eval.depths ([1] for baseline, which ignores depth); tasks: --eval.tasks or the training
    tasks; --eval.num_samples problems per (task, depth) and the first --eval.num_samples held-out rows.
    With a sharded model every rank must run the forwards; only the one with write=True records them."""
    run_dir = Path(run_dir)
    depths = effective_depths(model, cfg.eval.depths)
    tasks = cfg.eval.tasks or cfg.data.tasks
    accuracy = accuracy_grid(
        model, tokenizer, tasks, depths, cfg.eval.num_samples, seed=cfg.seed, max_new_tokens=cfg.eval.max_new_tokens
    )
    val = validation_path(cfg, run_dir)
    val_loss = None
    if val is not None:
        section = heldout_loss(
            model, val, depths, batch_size=min(16, cfg.eval.num_samples), max_rows=cfg.eval.num_samples, progress=False
        )
        val_loss = {f"r{r['depth']}": r["loss"] for r in section["results"]}
    record = {"step": step, "accuracy": accuracy, "val_loss": val_loss}
    if write:
        run = RunDir(run_dir)
        with open(run.eval_log, "a") as f:
            f.write(json.dumps(record) + "\n")
        plot_training_eval(read_eval_records(run_dir), run.accuracy_plot)
    metrics = {f"eval/acc/{k}": v for k, v in accuracy.items()}
    metrics.update({f"eval/val_loss/{k}": v for k, v in (val_loss or {}).items()})
    return {**record, "metrics": metrics}
