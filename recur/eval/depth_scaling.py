"""The depth-scaling report: does a looped model use its depth? Loss and accuracy vs test-time depth for
several trained arms (e.g. `baseline` and `recurrent`), read from their depth-sweep results files.

`depth_report(arms)` returns the JSON of the experiment: per arm its held-out loss per depth, per (task,
difficulty, depth) its accuracy with the 95% interval, and the issue's targets evaluated (each a boolean
with the numbers it was decided on). `report_markdown` renders the tables; `plot_depth_scaling` the figures.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from recur.data.task_audit import best_shortcut
from recur.data.tasks import get_task
from recur.eval.plots import panel_grid, save_figure
from recur.run_dir import RunDir

# Targets (issue 14): a looped model must stay put far past its training depth, gain from depth, and
# extend a depth-hungry task beyond its training difficulty.
DEEP_LOSS_TOLERANCE = 0.02  # loss at the deepest r within 2% of the best depth's
DEPTH_GAIN = 0.03  # loss at r = r̄ at least 3% below r = 1
OOD_GAIN_OVER_R1 = 0.30  # chain at 2x training hops: best depth >= r = 1 + 0.30
OOD_GAIN_OVER_BASELINE = 0.20  # ... and >= the baseline's best + 0.20


@dataclass
class Arm:
    """One trained model of the experiment: its name, run directory and sweep results."""

    name: str
    run_dir: Path
    sweep: dict

    @property
    def looped(self) -> bool:
        return bool(self.sweep["metadata"]["model"].get("looped"))

    def losses(self) -> dict[int, float]:
        return {r["depth"]: r["loss"] for r in self.sweep["perplexity"]["results"]}

    def cells(self, task: str, difficulty: int) -> dict[int, dict]:
        results = self.sweep["algorithmic"]["tasks"][task]["results"]
        return {r["depth"]: r for r in results if r["difficulty"] == difficulty}


def training_health(run_dir: Path) -> dict:
    """Non-finite / skipped steps and the scheduled r̄ at the end of training, from metrics.jsonl."""
    records = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "loss" in r and "step" in r]
    bad = [r["step"] for r in steps if r.get("skipped") or not math.isfinite(r["loss"])]
    return {
        "steps": len(steps),
        "nonfinite_steps": bad,
        "final_mean_recurrence": steps[-1].get("mean_recurrence"),
        "final_loss": steps[-1]["loss"],
    }


def ood_difficulty(task: str) -> int | None:
    """The smallest evaluated difficulty at least twice the training one (None if the grid has none)."""
    spec = get_task(task)
    harder = [d for d in spec.ood_difficulties if d >= 2 * spec.train_difficulty]
    return min(harder) if harder else None


def _loss_targets(arm: Arm, mean_recurrence: int | None) -> dict:
    losses = arm.losses()
    best_depth = min(losses, key=losses.get)
    deepest = max(losses)
    out = {
        "best_depth": best_depth,
        "best_loss": losses[best_depth],
        "deepest": deepest,
        "deepest_loss": losses[deepest],
        "deep_stable": losses[deepest] <= (1 + DEEP_LOSS_TOLERANCE) * losses[best_depth],
    }
    if mean_recurrence in losses and 1 in losses:
        out.update(
            mean_recurrence=mean_recurrence,
            loss_r1=losses[1],
            loss_rbar=losses[mean_recurrence],
            depth_gain=losses[mean_recurrence] <= (1 - DEPTH_GAIN) * losses[1],
        )
    return out


def _best_cell(cells: dict[int, dict]) -> dict:
    return max(cells.values(), key=lambda c: (c["accuracy"], -c["depth"]))


def _ood_targets(arm: Arm, baseline: Arm | None, task: str) -> dict | None:
    level = ood_difficulty(task)
    if level is None or task not in arm.sweep["algorithmic"]["tasks"]:
        return None
    cells = arm.cells(task, level)
    if not cells or 1 not in cells:
        return None
    best = _best_cell(cells)
    out = {
        "task": task,
        "difficulty": level,
        "r1_accuracy": cells[1]["accuracy"],
        "best_depth": best["depth"],
        "best_accuracy": best["accuracy"],
        "num_samples": best["num_samples"],
        "gain_over_r1": best["accuracy"] >= cells[1]["accuracy"] + OOD_GAIN_OVER_R1,
    }
    if baseline is not None and baseline.cells(task, level):
        base = _best_cell(baseline.cells(task, level))["accuracy"]
        out.update(
            baseline=baseline.name,
            baseline_best=base,
            gain_over_baseline=best["accuracy"] >= base + OOD_GAIN_OVER_BASELINE,
        )
    return out


def depth_report(
    arms: list[Arm],
    baseline: str | None = "baseline",
    target_task: str = "chain",
    controls: dict[str, str] | None = None,
) -> dict:
    """The experiment's JSON: per arm the training health, loss per depth, accuracy cells and targets. A looped
    arm's OOD target compares it with `baseline`, or with its own control arm in `controls` (e.g. a retrofit
    with the baseline trained on for as many steps)."""
    by_name = {a.name: a for a in arms}
    report = {"arms": {}, "chance": {}}
    for arm in arms:
        health = training_health(arm.run_dir)
        entry = {
            "looped": arm.looped,
            "training": health,
            "loss": arm.losses(),
            "algorithmic": arm.sweep["algorithmic"]["tasks"],
        }
        if arm.looped:
            entry["targets"] = {
                "no_nonfinite_training_steps": not health["nonfinite_steps"],
                **_loss_targets(arm, health["final_mean_recurrence"]),
            }
            ood = _ood_targets(arm, by_name.get((controls or {}).get(arm.name, baseline)), target_task)
            if ood is not None:
                entry["targets"]["ood"] = ood
        report["arms"][arm.name] = entry
    for task, info in arms[0].sweep["algorithmic"]["tasks"].items():
        levels = sorted({r["difficulty"] for r in info["results"]})
        report["chance"][task] = {level: best_shortcut(task, level, 1000)[1] for level in levels}
    return report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def report_markdown(report: dict) -> str:
    """Loss-vs-depth and accuracy-vs-(depth × difficulty) tables with n and 95% intervals, then targets."""
    arms = report["arms"]
    depths = sorted({int(d) for a in arms.values() for d in a["loss"]})
    lines = [
        "### Held-out loss vs test-time depth",
        "",
        "| arm | " + " | ".join(f"r={d}" for d in depths) + " | nonfinite train steps |",
        "|---|" + "---|" * (len(depths) + 1),
    ]
    for name, arm in arms.items():
        loss = {int(k): v for k, v in arm["loss"].items()}
        row = [_fmt(loss.get(d)) if arm["looped"] or d == depths[0] else "″" for d in depths]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {len(arm['training']['nonfinite_steps'])} |")
    for task, chance in report["chance"].items():
        lines += [
            "",
            f"### {task}: exact match vs depth (n per cell; [95% Wilson interval])",
            "",
            "| arm | difficulty | chance | " + " | ".join(f"r={d}" for d in depths) + " |",
            "|---|---|---|" + "---|" * len(depths),
        ]
        for name, arm in arms.items():
            for level in sorted(chance, key=int):
                cells = {c["depth"]: c for c in arm["algorithmic"][task]["results"] if c["difficulty"] == int(level)}
                row = [
                    f"{c['accuracy']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]" if (c := cells.get(d)) else "″"
                    for d in depths
                ]
                n = next(iter(cells.values()))["num_samples"] if cells else 0
                lines.append(f"| {name} | {level} (n={n}) | {chance[level]:.2f} | " + " | ".join(row) + " |")
    lines += ["", "### Targets", ""]
    for name, arm in arms.items():
        if "targets" in arm:
            lines.append(f"- **{name}**: `{json.dumps(arm['targets'], default=str)}`")
    return "\n".join(lines) + "\n"


def plot_depth_scaling(report: dict, out_dir: Path) -> list[Path]:
    """loss_vs_depth.png (one line per arm) and accuracy_vs_depth.png (a panel per task × difficulty)."""
    import matplotlib.pyplot as plt

    arms = report["arms"]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, arm in arms.items():
        points = sorted((int(d), v) for d, v in arm["loss"].items())
        if not arm["looped"]:
            ax.axhline(points[0][1], ls="--", color="grey", label=f"{name} (no recurrence)")
            continue
        ax.plot(*zip(*points), marker="o", ms=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="test-time recurrence r", ylabel="held-out loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths = [save_figure(fig, out_dir / "loss_vs_depth.png")]
    panels = [(task, int(level)) for task, chance in report["chance"].items() for level in chance]
    fig, axes = panel_grid(max(1, len(panels)))
    for ax, (task, level) in zip(axes, panels):
        for name, arm in arms.items():
            cells = sorted((c["depth"], c) for c in arm["algorithmic"][task]["results"] if c["difficulty"] == level)
            xs, accs = [d for d, _ in cells], [c["accuracy"] for _, c in cells]
            errs = [
                [a - c["ci_low"] for a, (_, c) in zip(accs, cells)],
                [c["ci_high"] - a for a, (_, c) in zip(accs, cells)],
            ]
            if not arm["looped"]:
                ax.axhline(accs[0], ls="--", color="grey", label=f"{name}")
                continue
            ax.errorbar(xs, accs, yerr=errs, marker="o", ms=3, capsize=2, label=name)
        ax.axhline(report["chance"][task][level], ls=":", color="black", lw=1, label="best shortcut")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{task}, {get_task(task).knob} = {level}", fontsize=9)
        ax.set(xlabel="test-time recurrence r", ylabel="exact match", ylim=(-0.03, 1.03))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    paths.append(save_figure(fig, out_dir / "accuracy_vs_depth.png"))
    return paths
