"""Figures of evaluation results: per-suite plots, depth sweeps, the in-training accuracy plot, run comparisons.

Every figure is written atomically (temp name + rename) as PNG with labelled axes.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recur.atomic import atomic_path  # noqa: E402


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:  # the temp name has no .png suffix to infer the format from
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def panel_grid(n: int) -> tuple:
    """A figure with `n` visible panels, at most three per row; returns (figure, list of axes)."""
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _depth_label(depth: int, note: str | None) -> str:
    return "baseline (no recurrence)" if note else f"r = {depth}"


def plot_algorithmic(section: dict, note: str | None, path: Path) -> Path:
    """Accuracy vs difficulty, one panel per task, one line per depth (training difficulty marked)."""
    tasks = [t for t, v in section["tasks"].items() if v["results"]]
    fig, axes = panel_grid(max(1, len(tasks)))
    for ax, task in zip(axes, tasks):
        info = section["tasks"][task]
        for depth in sorted({r["depth"] for r in info["results"]}):
            cells = sorted((r["difficulty"], r["accuracy"]) for r in info["results"] if r["depth"] == depth)
            ax.plot(*zip(*cells), marker="o", ms=3, label=_depth_label(depth, note))
        ax.axvline(info["train_difficulty"], color="grey", ls=":", lw=1)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel(f"difficulty ({info['knob']}); dotted = training")
        ax.set_ylabel("exact-match accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


def plot_needle(section: dict, note: str | None, path: Path) -> Path:
    """Needle retrieval accuracy vs context length, one line per depth."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for depth in sorted({r["depth"] for r in section["summary"]}):
        cells = sorted((r["context_length"], r["accuracy"]) for r in section["summary"] if r["depth"] == depth)
        ax.plot(*zip(*cells), marker="o", label=_depth_label(depth, note))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle retrieval accuracy")
    ax.set_ylim(-0.03, 1.03)
    skipped = ", ".join(str(s["context_length"]) for s in section["skipped"])
    ax.set_title(f"needle in a haystack (skipped: {skipped})" if skipped else "needle in a haystack", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_perplexity(section: dict, note: str | None, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    cells = sorted((r["depth"], r["perplexity"]) for r in section["results"])
    ax.plot(*zip(*cells), marker="o")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("recurrence depth r (num_steps)" + (" — ignored by baseline" if note else ""))
    ax.set_ylabel("held-out perplexity")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_results(results: dict, out_dir: Path) -> list[Path]:
    """One PNG per suite present in a results file."""
    note = results["metadata"]["depth_note"]
    made = []
    if results.get("algorithmic"):
        made.append(plot_algorithmic(results["algorithmic"], note, out_dir / "algorithmic.png"))
    if results.get("longctx") and results["longctx"]["summary"]:
        made.append(plot_needle(results["longctx"], note, out_dir / "needle.png"))
    if results.get("perplexity"):
        made.append(plot_perplexity(results["perplexity"], note, out_dir / "perplexity.png"))
    return made


def _sweep_series(sweeps: list[dict]) -> dict:
    """{"loss": {(run, step, depth): v}, "accuracy": ...} from sweep results (mean in-distribution acc)."""
    series = {"loss": {}, "accuracy": {}}
    for data in sweeps:
        ckpt = data["metadata"]["checkpoint"]
        run = Path(ckpt["run_dir"]).name if ckpt["run_dir"] else Path(ckpt["path"]).name
        step = ckpt["step"] if ckpt["step"] is not None else 0
        for r in data.get("perplexity", {}).get("results", []):
            series["loss"][(run, step, r["depth"])] = r["loss"]
        for r in data.get("algorithmic", {}).get("summary", []):
            if r["in_distribution"] is not None:
                series["accuracy"][(run, step, r["depth"])] = r["in_distribution"]
    return series


def plot_sweep(sweeps: list[dict], out_dir: Path) -> list[Path]:
    """sweep_depth.png (metric vs depth, one line per checkpoint) and sweep_steps.png (metric vs training
    step, one line per depth, and per run when several runs are swept): held-out loss on top, mean
    in-distribution accuracy below."""
    series = _sweep_series(sweeps)
    ylabels = {"loss": "held-out loss (nats/token)", "accuracy": "exact-match accuracy (ID mean over tasks)"}
    metrics = [m for m in ("loss", "accuracy") if series[m]]
    made = []
    for kind in ("depth", "steps"):
        fig, axes = plt.subplots(len(metrics), 1, figsize=(7, 3.4 * len(metrics)), squeeze=False)
        for ax, metric in zip(axes[:, 0], metrics):
            points = series[metric]
            runs = sorted({k[0] for k in points})
            if kind == "depth":
                for run, step in sorted({k[:2] for k in points}):
                    cells = sorted((k[2], v) for k, v in points.items() if k[:2] == (run, step))
                    if len(cells) == 1:  # a model without recurrence: the same value at every depth
                        ax.axhline(cells[0][1], ls="--", lw=1, label=f"{run} @ {step} (depth ignored)")
                    else:
                        ax.plot(*zip(*cells), marker="o", ms=3, label=f"{run} @ {step}")
                ax.set_xscale("log", base=2)
                ax.set_xlabel("recurrence depth r (num_steps)")
            else:
                for run in runs:
                    for depth in sorted({k[2] for k in points if k[0] == run}):
                        cells = sorted((k[1], v) for k, v in points.items() if k[0] == run and k[2] == depth)
                        label = f"r = {depth}" if len(runs) == 1 else f"{run} r = {depth}"
                        ax.plot(*zip(*cells), marker="o", ms=3, label=label)
                ax.set_xlabel("training step")
            ax.set_ylabel(ylabels[metric])
            if metric == "accuracy":
                ax.set_ylim(-0.03, 1.03)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
        made.append(save_figure(fig, out_dir / f"sweep_{kind}.png"))
    return made


def plot_training_eval(records: list[dict], path: Path) -> Path:
    """accuracy.png during training: accuracy vs step per (task, depth), and held-out loss vs step per depth."""
    has_loss = any(r.get("val_loss") for r in records)
    fig, axes = plt.subplots(2 if has_loss else 1, 1, figsize=(8, 7 if has_loss else 4.5), squeeze=False)
    ax = axes[0, 0]
    series: dict[str, list] = {}
    for record in records:
        for key, acc in record["accuracy"].items():
            series.setdefault(key, []).append((record["step"], acc))
    for key, points in sorted(series.items()):
        ax.plot(*zip(*points), marker="o", ms=3, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("exact-match accuracy")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=3)
    if has_loss:
        ax_loss = axes[1, 0]
        losses: dict[str, list] = {}
        for record in records:
            for key, loss in (record.get("val_loss") or {}).items():
                losses.setdefault(key, []).append((record["step"], loss))
        for key, points in sorted(losses.items(), key=lambda kv: int(kv[0].lstrip("r"))):
            ax_loss.plot(*zip(*points), marker="o", ms=3, label=key.replace("r", "r = "))
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("held-out loss (nats/token)")
        ax_loss.grid(alpha=0.3)
        ax_loss.legend(fontsize=7, ncol=4)
    return save_figure(fig, path)
