"""Multi-depth validation sweep: checkpoints × depths -> held-out loss/perplexity and algorithmic accuracy.

One results file per checkpoint (suite "sweep", schema in recur/eval/schema.py) and two figures:
sweep_depth.png (metric vs depth, one line per checkpoint) and sweep_steps.png (metric vs training step,
one line per depth).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from recur.eval.hub import HubConfig, evaluate_model, resolve_tokenizer, with_run_tasks, write_results
from recur.eval.load import list_checkpoints, load_model, resolve_checkpoint
from recur.eval.meta import check_depths, default_device
from recur.eval.plots import plot_sweep

DEFAULT_DEPTHS = [1, 2, 4, 8, 16, 32, 64]


def sweep_filename(results: dict) -> str:
    ckpt = results["metadata"]["checkpoint"]
    name = Path(ckpt["run_dir"]).name if ckpt["run_dir"] else Path(ckpt["path"]).stem
    step = f"step_{ckpt['step']:08d}" if ckpt["step"] is not None else "export"
    return f"sweep_{name}_{step}.json"


def run_sweep(
    paths: list[str],
    out_dir: str | Path,
    depths: list[int] | None = None,
    all_checkpoints: bool = True,
    cfg: HubConfig | None = None,
) -> list[Path]:
    """Evaluate every checkpoint of every path (a run: all its complete checkpoints when all_checkpoints,
    else the newest) at every depth; returns the results files written, then plots all of them.

    `cfg` carries the evaluation knobs (tasks, samples, data, ood, ...); its checkpoint/suite are unused."""
    depths = check_depths(depths or DEFAULT_DEPTHS, "--depths")
    if not paths:
        raise ValueError("--checkpoint: give at least one run or checkpoint")
    cfg = replace(cfg or HubConfig(checkpoint=paths[0]), suite="sweep", num_steps=depths)
    cfg.validate()
    checkpoints = [c for p in paths for c in (list_checkpoints(p) if all_checkpoints else [resolve_checkpoint(p)])]
    out_dir = Path(out_dir)
    written = []
    for checkpoint in tqdm(checkpoints, desc="sweep", unit="checkpoint"):
        model, _, meta = load_model(checkpoint, cfg.device or default_device())
        tokenizer, spec = resolve_tokenizer(model, meta, cfg.tokenizer)
        results = evaluate_model(model, meta, tokenizer, spec, with_run_tasks(cfg, meta), "sweep", depths)
        path = out_dir / sweep_filename(results)
        write_results(results, path)
        written.append(path)
    if cfg.plots:
        plot_sweep([json.loads(p.read_text()) for p in written], out_dir)
    return written
