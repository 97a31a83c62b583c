"""Compare runs (e.g. the nano ladder): one table (markdown + JSON), figures, and the ReLSM success
criteria evaluated per variant against the baseline run.

Per run it reads summary.json (train time, tokens/s), config.yaml (variant) and the eval hub's results
(<run>/eval/results_all.json, else results_algorithmic/longctx/perplexity.json). Accuracy is taken at
each run's best depth (the depth is reported), perplexity at its lowest across depths.

Success criteria (ReLSM README), each pass / fail / null (data missing, with the reason):
    algorithmic_gain   mean in-distribution accuracy − baseline's >= 0.05 (absolute, i.e. 5 points)
    better_ood         mean OOD accuracy > baseline's
    train_time         wall time <= 2 × baseline's
    no_ppl_collapse    perplexity <= ppl_tolerance × baseline's (default 1.5)
A variant wins when all four pass.

Every accuracy compared with the baseline's (per task, ID and OOD means) carries its sample count and
95% Wilson interval; a mean over cells pools their counts (sum correct / sum n). A difference whose
intervals overlap the baseline's is marked not significant ("significant": false in compare.json,
"(n.s.)" in compare.md). algorithmic_gain and better_ood keep their pass/fail, but record "significant"
so that a pass resting on noise reads "pass (n.s.)".

Numbers measured on different things are not comparable: when the runs' perplexities come from different
held-out sets (content or row count) or their accuracies from different sample counts or problem seeds,
each such issue is one line in report["warnings"] (compare.json), on top of compare.md, and on stderr.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from recur.atomic import write_text  # noqa: E402
from recur.eval.plots import save_figure  # noqa: E402
from recur.eval.schema import validate_results  # noqa: E402
from recur.eval.stats import intervals_overlap, pooled_counts  # noqa: E402
from recur.run_dir import RunDir  # noqa: E402

RESULT_FILES = ("results_all.json", "results_algorithmic.json", "results_longctx.json", "results_perplexity.json")
ALG_GAIN, TIME_RATIO = 0.05, 2.0


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def load_run(run_dir: Path, results_dir: str = "eval") -> dict:
    """Everything compare needs from one run directory; sections with no data are None."""
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    merged: dict = {}
    for name in RESULT_FILES:
        data = _read_json(run_dir / results_dir / name)
        if data is None:
            continue
        validate_results(data, str(run_dir / results_dir / name))
        for section in ("algorithmic", "longctx", "perplexity", "metadata"):
            merged.setdefault(section, data.get(section))
    run = RunDir(run_dir)
    summary = _read_json(run.summary) or {}
    if not merged and not summary:
        raise ValueError(
            f"{run_dir}: neither summary.json nor eval results under {run_dir / results_dir}; "
            f"run eval_hub.py --checkpoint {run_dir} --suite all first"
        )
    variant = (merged.get("metadata") or {}).get("model", {}).get("variant")
    if variant is None and run.config.is_file():
        import yaml

        variant = (yaml.safe_load(run.config.read_text()).get("model") or {}).get("variant")
    return {"name": run_dir.name, "path": str(run_dir), "variant": variant or "unknown", "summary": summary, **merged}


def _best_depth(section: dict | None, key: str) -> tuple[int | None, float | None]:
    rows = [r for r in (section or {}).get("summary", []) if r.get(key) is not None]
    if not rows:
        return None, None
    best = max(rows, key=lambda r: (r[key], -r["depth"]))
    return best["depth"], best[key]


def run_row(run: dict) -> dict:
    """The comparison metrics of one run."""
    alg = run.get("algorithmic")
    id_depth, id_acc = _best_depth(alg, "in_distribution")
    ood_depth, ood_acc = _best_depth(alg, "ood")
    tasks = (alg or {}).get("tasks", {})
    cells = [r for info in tasks.values() for r in info["results"]]
    best_cell = {
        task: max(
            (r for r in info["results"] if r["in_distribution"] and r["depth"] == id_depth),
            key=lambda r: r["accuracy"],
            default=None,
        )
        for task, info in tasks.items()
    }
    needle = run.get("longctx")
    needle_depth = max(
        ((s["depth"], s["accuracy"]) for s in (needle or {}).get("summary", [])),
        key=lambda d: d[1],
        default=(None, None),
    )[0]
    needle_acc = {
        str(s["context_length"]): s["accuracy"] for s in (needle or {}).get("summary", []) if s["depth"] == needle_depth
    }
    ppl_rows = (run.get("perplexity") or {}).get("results", [])
    best_ppl = min(ppl_rows, key=lambda r: r["perplexity"], default=None)
    summary = run["summary"]
    return {
        "name": run["name"],
        "variant": run["variant"],
        "path": run["path"],
        "algorithmic_id": id_acc,
        "algorithmic_id_depth": id_depth,
        "algorithmic_id_counts": pooled_counts(r for r in cells if r["in_distribution"] and r["depth"] == id_depth),
        "per_task": {task: None if c is None else c["accuracy"] for task, c in best_cell.items()},
        "per_task_counts": {task: None if c is None else pooled_counts([c]) for task, c in best_cell.items()},
        "ood": ood_acc,
        "ood_depth": ood_depth,
        "ood_counts": pooled_counts(r for r in cells if not r["in_distribution"] and r["depth"] == ood_depth),
        "needle": needle_acc,
        "needle_depth": needle_depth,
        "perplexity": best_ppl["perplexity"] if best_ppl else None,
        "perplexity_depth": best_ppl["depth"] if best_ppl else None,
        "train_time_s": summary.get("wall_time_s"),
        "tokens_per_s": summary.get("mean_tokens_per_s"),
        "final_loss": summary.get("final_loss"),
    }


def _heldout_set(section: dict) -> str:
    """What a perplexity was measured on: the dataset's content fingerprint while it is on disk (each run
    generates its own copy under its directory, so paths alone always differ), else its path; and the rows."""
    from recur.data.packed_reader import PackedShards

    try:
        identity = PackedShards(section["data"]).fingerprint
    except (OSError, ValueError, KeyError):
        identity = section["data"]
    return f"{section['rows']} rows of {identity}"


def _sample_counts(section: dict) -> str:
    counts = sorted({r["num_samples"] for info in section["tasks"].values() for r in info["results"]})
    return "n=" + "/".join(map(str, counts))


def _differs(what: str, described: dict[str, str]) -> list[str]:
    """One warning line when the runs' descriptions of `what` are not all equal."""
    if len(set(described.values())) < 2:
        return []
    return [
        f"{what} differ between runs, so their numbers are not comparable: "
        + "; ".join(f"{name}: {text}" for name, text in described.items())
    ]


def evaluation_mismatches(runs: list[dict]) -> list[str]:
    """One line per way in which the runs were not evaluated on the same data."""
    return (
        _differs(
            "held-out perplexity sets", {r["name"]: _heldout_set(r["perplexity"]) for r in runs if r.get("perplexity")}
        )
        + _differs(
            "algorithmic sample counts",
            {r["name"]: _sample_counts(r["algorithmic"]) for r in runs if r.get("algorithmic")},
        )
        + _differs(
            "evaluation seeds",
            {
                r["name"]: f"seed {r['metadata'].get('seed')}"
                for r in runs
                if r.get("metadata") and r.get("algorithmic")
            },
        )
    )


def _criterion(value, base, test, threshold: str) -> dict:
    if value is None or base is None:
        return {
            "pass": None,
            "value": None,
            "threshold": threshold,
            "reason": "missing data for this run or the baseline",
        }
    measured, passed = test(value, base)
    return {"pass": bool(passed), "value": measured, "threshold": threshold, "reason": None}


def _significant(counts: dict | None, base: dict | None) -> bool | None:
    """Whether two pooled accuracies' 95% intervals are disjoint; None when either side has no counts."""
    if counts is None or base is None:
        return None
    return not intervals_overlap((counts["ci_low"], counts["ci_high"]), (base["ci_low"], base["ci_high"]))


def significance(row: dict, base: dict) -> dict:
    """{"algorithmic_id", "ood", "per_task": {task}}: which of the row's accuracies differ from the baseline's."""
    return {
        "algorithmic_id": _significant(row["algorithmic_id_counts"], base["algorithmic_id_counts"]),
        "ood": _significant(row["ood_counts"], base["ood_counts"]),
        "per_task": {
            task: _significant(counts, base["per_task_counts"].get(task))
            for task, counts in row["per_task_counts"].items()
        },
    }


def success_criteria(row: dict, base: dict, ppl_tolerance: float) -> dict:
    significant = significance(row, base)  # recorded, not applied: a pass on overlapping intervals stays a pass
    criteria = {
        "algorithmic_gain": {
            **_criterion(
                row["algorithmic_id"],
                base["algorithmic_id"],
                lambda v, b: (v - b, v - b >= ALG_GAIN),
                f">= +{ALG_GAIN} absolute",
            ),
            "significant": significant["algorithmic_id"],
        },
        "better_ood": {
            **_criterion(row["ood"], base["ood"], lambda v, b: (v - b, v > b), "> 0 (vs baseline)"),
            "significant": significant["ood"],
        },
        "train_time": _criterion(
            row["train_time_s"],
            base["train_time_s"],
            lambda v, b: (v / b, v / b <= TIME_RATIO),
            f"<= {TIME_RATIO}x baseline",
        ),
        "no_ppl_collapse": _criterion(
            row["perplexity"],
            base["perplexity"],
            lambda v, b: (v / b, v / b <= ppl_tolerance),
            f"<= {ppl_tolerance}x baseline",
        ),
    }
    verdicts = [c["pass"] for c in criteria.values()]
    criteria["wins"] = None if None in verdicts and False not in verdicts else all(v is True for v in verdicts)
    return criteria


def compare_runs(
    run_dirs: list[str | Path],
    out_dir: str | Path,
    baseline: str | None = None,
    results_dir: str = "eval",
    ppl_tolerance: float = 1.5,
) -> dict:
    """Write compare.json, compare.md and compare_*.png to out_dir; returns the JSON."""
    if len(run_dirs) < 1:
        raise ValueError("compare_runs.py: give at least one run directory")
    if ppl_tolerance <= 0:
        raise ValueError(f"--ppl_tolerance must be > 0, got {ppl_tolerance}")
    runs = [load_run(Path(d), results_dir) for d in run_dirs]
    rows = [run_row(r) for r in runs]
    if baseline is not None:
        base = next((r for r in rows if r["name"] == Path(baseline).name), None)
        if base is None:
            raise ValueError(f"--baseline {baseline} is not one of the runs given")
    else:
        base = next((r for r in rows if r["variant"] == "baseline"), None)
    for row in rows:
        if base is None:
            row["criteria"] = {"wins": None, "reason": "no baseline run among the runs (give --baseline)"}
        elif row is not base:
            row["significant"] = significance(row, base)
            row["criteria"] = success_criteria(row, base, ppl_tolerance)
    report = {
        "baseline": base["name"] if base else None,
        "ppl_tolerance": ppl_tolerance,
        "warnings": evaluation_mismatches(runs),
        "runs": rows,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.json", json.dumps(report, indent=2))
    write_text(out / "compare.md", markdown_table(report))
    plot_comparison(runs, rows, out)
    return report


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _acc(value: float | None, depth: int | None, counts: dict | None, significant: bool | None) -> str:
    """'0.600 (r) [0.31, 0.83] n=10', plus ' (n.s.)' where the baseline's interval overlaps."""
    if value is None:
        return "n/a"
    text = f"{value:.3f}" + (f" ({depth})" if depth is not None else "")
    if counts is not None:
        text += f" [{counts['ci_low']:.2f}, {counts['ci_high']:.2f}] n={counts['num_samples']}"
    return text + (" (n.s.)" if significant is False else "")


def _verdict(passed: bool | None, significant: bool | None = None) -> str:
    return {True: "pass", False: "FAIL", None: "n/a"}[passed] + (" (n.s.)" if passed and significant is False else "")


def markdown_table(report: dict) -> str:
    lines = [f"**Warning:** {w}" for w in report.get("warnings", [])] + [""] * bool(report.get("warnings"))
    lines += [
        "| run | variant | ID acc (r) [95% CI] n | OOD acc (r) [95% CI] n | needle (len: acc) | ppl (r) "
        "| train time s | tok/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        sig = r.get("significant") or {}
        needle = ", ".join(f"{k}: {v:.2f}" for k, v in r["needle"].items()) or "n/a"
        id_acc = _acc(
            r["algorithmic_id"], r["algorithmic_id_depth"], r["algorithmic_id_counts"], sig.get("algorithmic_id")
        )
        ood_acc = _acc(r["ood"], r["ood_depth"], r["ood_counts"], sig.get("ood"))
        lines.append(
            f"| {r['name']} | {r['variant']} | {id_acc} | {ood_acc} | {needle} "
            f"| {_fmt(r['perplexity'], '.3f')} ({r['perplexity_depth']}) | {_fmt(r['train_time_s'], '.1f')} "
            f"| {_fmt(r['tokens_per_s'], ',.0f')} |"
        )
    tasks = sorted({t for r in report["runs"] for t in r["per_task"]})
    if tasks:
        lines += [
            "",
            "Accuracy per task (in-distribution, at each run's best depth) [95% CI] n:",
            "",
            "| run | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for r in report["runs"]:
            sig = (r.get("significant") or {}).get("per_task", {})
            lines.append(
                f"| {r['name']} | "
                + " | ".join(_acc(r["per_task"].get(t), None, r["per_task_counts"].get(t), sig.get(t)) for t in tasks)
                + " |"
            )
    lines += [
        "",
        "[low, high]: 95% Wilson interval (means pool their cells: sum correct / sum n); (n.s.): it "
        "overlaps the baseline's, so the difference from the baseline is not significant.",
    ]
    lines += [
        "",
        f"Success criteria vs baseline `{report['baseline']}` (ReLSM): ≥ +0.05 ID accuracy, better OOD, "
        f"≤ 2× train time, perplexity ≤ {report['ppl_tolerance']}× baseline.",
        "",
        "| run | algorithmic gain | better OOD | train time ratio | ppl ratio | wins |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        c = r.get("criteria")
        if c is None:
            continue
        if "algorithmic_gain" not in c:
            lines.append(f"| {r['name']} | {c['reason']} | | | | n/a |")
            continue
        keys = ("algorithmic_gain", "better_ood", "train_time", "no_ppl_collapse")
        cells = [
            f"{_fmt(c[k]['value'], '+.3f' if k in ('algorithmic_gain', 'better_ood') else '.2f')} "
            f"{_verdict(c[k]['pass'], c[k].get('significant'))}"
            for k in keys
        ]
        # A win that needs an n.s. pass is flagged too: it may not survive more samples.
        shaky = any(c[k]["pass"] and c[k].get("significant") is False for k in keys)
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {_verdict(c['wins'], not shaky)} |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs: list[dict], rows: list[dict], out: Path) -> list[Path]:
    made = []
    tasks = sorted({t for r in rows for t in r["per_task"]})
    if tasks:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4))
        width = 0.8 / len(rows)
        for i, r in enumerate(rows):
            values = [r["per_task"].get(t) or 0.0 for t in tasks]
            ax.bar(np.arange(len(tasks)) + i * width, values, width, label=f"{r['name']} ({r['variant']})")
        ax.set_xticks(np.arange(len(tasks)) + 0.4 - width / 2, tasks, rotation=30, fontsize=8)
        ax.set_xlabel("task")
        ax.set_ylabel("exact-match accuracy (ID, best depth)")
        ax.set_ylim(0, 1.03)
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out / "compare_accuracy.png"))
        fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for run, row in zip(runs, rows):
                info = (run.get("algorithmic") or {}).get("tasks", {}).get(task)
                depth = row["ood_depth"] or row["algorithmic_id_depth"]
                cells = sorted(
                    (r["difficulty"], r["accuracy"]) for r in (info or {}).get("results", []) if r["depth"] == depth
                )
                if cells:
                    ax.plot(*zip(*cells), marker="o", ms=3, label=row["name"])
            if info:
                ax.axvline(info["train_difficulty"], color="grey", ls=":", lw=1)
                ax.set_xlabel(f"difficulty ({info['knob']})")
            ax.set_title(task, fontsize=9)
            ax.set_ylabel("exact-match accuracy")
            ax.set_ylim(-0.03, 1.03)
        axes[0][0].legend(fontsize=7)
        made.append(save_figure(fig, out / "compare_ood.png"))
    if any(r["needle"] for r in rows):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            if r["needle"]:
                cells = sorted((int(k), v) for k, v in r["needle"].items())
                ax.plot(*zip(*cells), marker="o", label=r["name"])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle retrieval accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out / "compare_needle.png"))
    if any(run.get("perplexity") for run in runs):
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in runs:
            cells = sorted((r["depth"], r["perplexity"]) for r in (run.get("perplexity") or {}).get("results", []))
            if len(cells) == 1:
                ax.axhline(cells[0][1], ls="--", lw=1, label=f"{run['name']} (depth ignored)")
            elif cells:
                ax.plot(*zip(*cells), marker="o", label=run["name"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("recurrence depth r")
        ax.set_ylabel("held-out perplexity")
        ax.legend(fontsize=7)
        made.append(save_figure(fig, out / "compare_perplexity.png"))
    return made
