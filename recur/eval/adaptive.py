"""Accuracy vs compute: adaptive exit at several thresholds against fixed depths, on the algorithmic tasks."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tqdm import tqdm  # noqa: E402

from recur.data.tokenizer import Tokenizer  # noqa: E402
from recur.eval.algorithmic import evaluate_task  # noqa: E402
from recur.eval.generate import ExitRule  # noqa: E402
from recur.eval.plots import save_figure  # noqa: E402
from recur.models.lm import DecoderLM  # noqa: E402


def _point(model, tokenizer, tasks, depth, num_samples, seed, difficulty, rule) -> dict:
    cells = [
        evaluate_task(model, tokenizer, task, depth, num_samples, seed, difficulty, exit_rule=rule) for task in tasks
    ]
    return {
        "accuracy": sum(c["accuracy"] for c in cells) / len(cells),
        "mean_steps": sum(c["mean_steps"] for c in cells) / len(cells),
    }


def exit_curve(
    model: DecoderLM,
    tokenizer: Tokenizer,
    tasks: list[str],
    max_steps: int,
    eps_values: list[float],
    criterion: str,
    num_samples: int,
    seed: int = 0,
    difficulty: int | None = None,
) -> dict:
    """{"fixed": [{depth, accuracy, mean_steps}], "adaptive": [{eps, accuracy, mean_steps}]}; mean accuracy
    over tasks at `difficulty` (None: each task's training difficulty); adaptive runs cap at max_steps."""
    depths = sorted({d for d in (1, 2, 4, 8, 16, 32, 64, max_steps) if d <= max_steps})
    fixed = [
        {"depth": d, **_point(model, tokenizer, tasks, d, num_samples, seed, difficulty, None)}
        for d in tqdm(depths, desc="fixed depths", leave=False)
    ]
    adaptive = [
        {
            "eps": eps,
            **_point(model, tokenizer, tasks, max_steps, num_samples, seed, difficulty, ExitRule(criterion, eps)),
        }
        for eps in tqdm(eps_values, desc="exit thresholds", leave=False)
    ]
    return {
        "criterion": criterion,
        "max_steps": max_steps,
        "tasks": tasks,
        "difficulty": difficulty,
        "fixed": fixed,
        "adaptive": adaptive,
    }


def plot_exit_curve(curve: dict, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    fixed = sorted((p["mean_steps"], p["accuracy"]) for p in curve["fixed"])
    ax.plot(*zip(*fixed), marker="s", label="fixed depth r")
    adaptive = sorted((p["mean_steps"], p["accuracy"], p["eps"]) for p in curve["adaptive"])
    ax.plot(
        [a[0] for a in adaptive],
        [a[1] for a in adaptive],
        marker="o",
        label=f"adaptive exit ({curve['criterion']}, r ≤ {curve['max_steps']})",
    )
    for steps, acc, eps in adaptive:
        ax.annotate(f"ε={eps:g}", (steps, acc), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("average recurrence steps used per token")
    ax.set_ylabel("exact-match accuracy (mean over tasks)")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)
