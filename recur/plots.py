"""loss.png of a run, refreshed during training (evaluation draws accuracy.png: recur/eval/plots.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recur.eval.plots import save_figure  # noqa: E402


def plot_loss(records: list[dict], path: Path) -> None:
    """Training loss (raw and smoothed, log scale) and the recurrence curriculum against the step."""
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    window = max(1, len(losses) // 50)
    smooth = [
        sum(losses[max(0, i - window + 1) : i + 1]) / len(losses[max(0, i - window + 1) : i + 1])
        for i in range(len(losses))
    ]
    fig, (ax, ax_r) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=[3, 1])
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label=f"moving average ({window})")
    ax.set_yscale("log")
    ax.set_ylabel("training loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_r.plot(steps, [r["r"] for r in records], ".", ms=2, alpha=0.4, label="sampled r")
    ax_r.plot(steps, [r["mean_recurrence"] for r in records], label="scheduled r̄")
    ax_r.plot(steps, [r["k"] for r in records], label="backprop depth k")
    ax_r.set_xlabel("step")
    ax_r.set_ylabel("recurrence")
    ax_r.legend(fontsize=7)
    save_figure(fig, path)
