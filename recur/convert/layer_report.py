"""Human- and machine-readable output of a layer analysis: table, JSON and a two-panel plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from recur.atomic import atomic_path
from recur.convert.layer_analysis import LayerAnalysis

ZONE_COLOURS = {"Prelude": "#4C72B0", "Recurrent": "#DD8452", "Coda": "#55A868", "DROPPED": "#9E9E9E"}


def format_table(analysis: LayerAnalysis) -> str:
    metrics, zones = analysis.metrics, analysis.split.zones()
    lines = [f"{'layer':>5}  {'BI':>8}  {'angular':>8}  zone", f"{'-' * 5}  {'-' * 8}  {'-' * 8}  {'-' * 9}"]
    for i, (bi, ang, zone) in enumerate(zip(metrics.block_influence, metrics.angular_distance, zones)):
        marks = [
            m
            for m, k in (
                ("encode/think knee", analysis.zones.encode_knee),
                ("think/decode knee", analysis.zones.decode_knee),
            )
            if k == i
        ]
        lines.append(f"{i:>5}  {bi:8.4f}  {ang:8.4f}  {zone:<9}" + (f"  <- {', '.join(marks)}" if marks else ""))
    return "\n".join(lines)


def format_summary(analysis: LayerAnalysis) -> str:
    split, zones = analysis.split, analysis.zones
    dropped = [i for i, z in enumerate(split.zones()) if z == "DROPPED"]
    return "\n".join(
        [
            f"model: {analysis.model_path}  layers: {analysis.n_layers}  samples: {analysis.num_samples}  "
            f"tokens: {analysis.num_tokens}",
            f"thinking zone (angular-distance knees): layers [{zones.prelude_size}, {analysis.n_layers - zones.coda_size}) "
            f"encode/think: {zones.source['encode_think']}, think/decode: {zones.source['think_decode']}",
            f"split: prelude {split.prelude_size}, recurrent [{split.start_index}, {split.start_index + split.block_size}), "
            f"coda {split.coda_size}, dropped {dropped}",
            f"converter flags: {split.cli_flags()}",
        ]
    )


def analysis_to_dict(analysis: LayerAnalysis) -> dict[str, Any]:
    metrics, split = analysis.metrics, analysis.split
    zones = split.zones()
    return {
        "model_path": analysis.model_path,
        "n_layers": analysis.n_layers,
        "num_samples": analysis.num_samples,
        "num_tokens": analysis.num_tokens,
        "target_recurrent_size": analysis.target_recurrent_size,
        "layers": [
            {"layer": i, "block_influence": bi, "angular_distance": ang, "zone": zone}
            for i, (bi, ang, zone) in enumerate(zip(metrics.block_influence, metrics.angular_distance, zones))
        ],
        "block_influence": metrics.block_influence,
        "angular_distance": metrics.angular_distance,
        "zones": asdict(analysis.zones),
        "split": {k: v for k, v in asdict(split).items() if k != "n_layers"},
        "dropped_layers": [i for i, z in enumerate(zones) if z == "DROPPED"],
        "cli_flags": split.cli_flags(),
    }


def write_json(analysis: LayerAnalysis, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(analysis_to_dict(analysis), indent=2) + "\n", encoding="utf-8")
    return path


def _zone_runs(zones: list[str]) -> list[tuple[str, int, int]]:
    """Contiguous ``(zone, first, last)`` runs, for shading."""
    runs: list[tuple[str, int, int]] = []
    for i, zone in enumerate(zones):
        if runs and runs[-1][0] == zone:
            runs[-1] = (zone, runs[-1][1], i)
        else:
            runs.append((zone, i, i))
    return runs


def save_plot(analysis: LayerAnalysis, path: str | Path) -> Path:
    """Top: BI bars coloured by zone. Bottom: angular distance with zone shading and knee markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    path = Path(path)
    metrics, zones = analysis.metrics, analysis.split.zones()
    layers = list(range(analysis.n_layers))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8.0, 0.35 * analysis.n_layers + 4), 7.5), sharex=True)
    top.bar(layers, metrics.block_influence, color=[ZONE_COLOURS[z] for z in zones], edgecolor="black", linewidth=0.4)
    top.set_ylabel("Block Influence  (1 - cos)")
    top.set_title(
        f"{Path(analysis.model_path).name}: layer analysis ({analysis.num_tokens} tokens)  -  "
        f"{analysis.split.cli_flags()}",
        fontsize=9,
    )
    present = [z for z in ZONE_COLOURS if z in zones]
    top.legend(
        handles=[Patch(color=ZONE_COLOURS[z], label=z) for z in present],
        loc="upper center",
        ncol=len(present),
        fontsize=8,
    )
    top.set_ylim(0, max(metrics.block_influence) * 1.2 or 1.0)  # headroom for the legend
    top.grid(axis="y", alpha=0.3)

    for zone, first, last in _zone_runs(zones):
        bottom.axvspan(first - 0.5, last + 0.5, color=ZONE_COLOURS[zone], alpha=0.18, linewidth=0)
    bottom.plot(
        layers,
        metrics.angular_distance,
        marker="o",
        color="black",
        linewidth=1.5,
        markersize=4,
        label="angular distance",
    )
    for knee, label, colour in (
        (analysis.zones.encode_knee, "encode/think knee", "#C44E52"),
        (analysis.zones.decode_knee, "think/decode knee", "#8172B2"),
    ):
        if knee is not None:
            bottom.axvline(knee, color=colour, linestyle="--", linewidth=1.2, label=f"{label} (layer {knee})")
    bottom.set_xlabel("layer index")
    bottom.set_ylabel("angular distance  arccos(cos)/pi")
    bottom.set_xticks(layers if analysis.n_layers <= 40 else layers[::2])
    bottom.set_xlim(-0.6, analysis.n_layers - 0.4)
    bottom.legend(fontsize=8, loc="best")
    bottom.grid(alpha=0.3)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
