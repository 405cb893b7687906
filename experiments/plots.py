"""The figures of a sweep (`experiments.ablate`): each variant's mean with its 95% interval over
seeds above, its paired difference from the baseline (or from the control the sweep's ``PAPER``
names for it) with that difference's own interval below (filled where the interval excludes
zero), and the learning curves. Notebook 04 draws the same
summary with `draw_summary`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import paper, stats


def _half(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _shown(metrics: Sequence[str]) -> list[str]:
    shown = list(metrics[:2])
    return ["AP50", "AP"] if shown == ["AP", "AP50"] else shown


def draw_summary(
    fig,
    table: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]] = (),
    metrics: Sequence[str] = ("AP", "AP50"),
    controls: Mapping[str, str] | None = None,
) -> None:
    """Draws the summary on ``fig`` (a matplotlib Figure): bars of the means ± their 95%
    intervals with each run as a dot (``rows``, the runs' records), and the paired differences
    from the table's first variant ± their intervals, a zero line through them. A variant in
    ``controls`` (variant -> control variant, as a sweep's ``PAPER`` names them) is compared
    with its control instead, and its tick says so."""
    controls = dict(controls or {})
    means_ax, diffs_ax = fig.subplots(2, 1, sharex=True)
    xs = range(len(table))
    shown = _shown(metrics)
    offsets = (-0.2, 0.2) if len(shown) == 2 else (0.0,)
    for offset, metric in zip(offsets, shown, strict=True):
        means = [e[metric] for e in table]
        halves = [_half(e[f"{metric}_ci"]) for e in table]
        bars = means_ax.bar(
            [x + offset for x in xs], means, 0.4, yerr=halves, capsize=3, label=metric
        )
        for x, entry in zip(xs, table, strict=True):
            runs = [
                float(r[metric])
                for r in rows
                if r["variant"] == entry["variant"] and r.get("status", "ok") == "ok"
            ]
            means_ax.plot([x + offset] * len(runs), runs, "k.", markersize=3)
        colour = bars.patches[0].get_facecolor() if bars.patches else None
        labelled = False
        for x, entry in list(zip(xs, table, strict=True))[1:]:
            diff, half = entry[f"{metric}_diff"], entry[f"{metric}_diff_ci"]
            if entry["variant"] in controls:
                diff, half, _ = paper.difference(
                    rows, entry["variant"], controls[entry["variant"]], metric
                )
            if math.isnan(diff):
                continue
            filled = stats.excludes_zero(diff, half)
            diffs_ax.errorbar(
                [x + offset],
                [diff],
                yerr=[_half(half)],
                fmt="o",
                capsize=3,
                color=colour,
                markerfacecolor=colour if filled else "white",
                label=None if labelled else metric,
            )
            labelled = True
    means_ax.set_ylabel("validation metric\n(95% interval over seeds)")
    means_ax.set_ylim(0, None)
    means_ax.legend(fontsize=8)
    diffs_ax.axhline(0.0, color="grey", linewidth=1)
    baseline = table[0]["variant"] if table else "baseline"
    against = f"{baseline} or the control named" if controls else baseline
    diffs_ax.set_ylabel(f"paired difference from {against}\n(95% interval; filled: excludes 0)")
    ticks = [e["variant"] for e in table]
    ticks = [f"{t}\n(vs {controls[t]})" if t in controls else t for t in ticks]
    diffs_ax.set_xticks(list(xs), ticks, rotation=30, ha="right")
    if len(table) > 1:
        diffs_ax.legend(fontsize=8)


def write_summary(
    workdir: str,
    table: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    controls: Mapping[str, str] | None = None,
) -> None:
    """`draw_summary` into ``workdir/results.png`` (nothing without matplotlib)."""
    try:
        from matplotlib.figure import Figure  # no pyplot: leaves a notebook's backend alone
    except ImportError:  # matplotlib is in the notebooks extra
        return
    if not table:
        return
    fig = Figure(figsize=(max(4.0, 0.9 * len(table) + 1.5), 6.5))
    draw_summary(fig, table, rows, metrics, controls)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "results.png"), dpi=120)


def learning_curves(workdir: str, variant: str, metric: str) -> dict[int, list[float]]:
    """``{update: [eval metric of each seed's run]}`` from the variant's metrics.jsonl files."""
    curves: dict[int, list[float]] = {}
    folder = os.path.join(workdir, variant)
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                value = record.get(f"eval/{metric}")
                if value is not None:
                    curves.setdefault(int(record["step"]), []).append(float(value))
    return curves


def write_curves(workdir: str, variants: Sequence[str], metric: str) -> None:
    """Each variant's mean eval ``metric`` against updates into ``workdir/curves.png``."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    fig = Figure(figsize=(6.0, 3.8))
    ax = fig.add_subplot()
    drawn = 0
    for variant in variants:
        curves = learning_curves(workdir, variant, metric)
        if not curves:
            continue
        steps = sorted(curves)
        means = [sum(curves[k]) / len(curves[k]) for k in steps]
        ax.plot(steps, means, marker="o", markersize=3, label=variant)
        drawn += 1
    if not drawn:
        return
    ax.set_xlabel("update")
    ax.set_ylabel(f"validation {metric} (mean over seeds)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "curves.png"), dpi=120)
