"""A sweep's measured directions beside the paper's (the sweep file's ``PAPER``).

    PAPER = {
        "no_mosaic": ("-", "Table 4, M"),                  # against the sweep's baseline
        "cmbn": ("+", "Table 4, CBN", "bn_subdivisions"),  # against another variant (control)
    }

Each entry is the paper's direction of the variant ("+", "-", or "0" for no difference), where
the paper says so ("?" where it names the item but reports no direction: the measured direction
is then given as "higher" or "lower", or "within noise"), and optionally the variant it is to be
compared with, where the sweep's baseline is not the paper's control (CmBN against BN per
mini-batch, dynamic mini-batch against random shapes alone, weighted fusion against its add
control). The comparison is the paired difference over the seeds both ran, with its
95% t interval (`experiments.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import stats

Entry = tuple[str, str, str | None]  # direction, source, control (None: the baseline)


def sweep_paper(module: Any, path: str, variants: Sequence[str]) -> dict[str, Entry]:
    """A loaded sweep file's ``PAPER``, checked: variant -> (direction, source, control)."""
    paper = {}
    for name, entry in dict(getattr(module, "PAPER", {})).items():
        if not (
            isinstance(entry, tuple)
            and len(entry) in (2, 3)
            and entry[0] in ("+", "-", "0", "?")
            and isinstance(entry[1], str)
        ):
            raise ValueError(
                f'{path}: PAPER[{name!r}] must be ("+", "-", "0" or "?", source text[, control])'
            )
        paper[name] = (entry[0], entry[1], entry[2] if len(entry) == 3 else None)
    named = set(paper) | {e[2] for e in paper.values() if e[2] is not None}
    if variants and named - set(variants):
        raise ValueError(f"{path}: PAPER names no variant {sorted(named - set(variants))}")
    return paper


def verdict(diff: float, half: float, expected: str) -> str:
    """Whether a measured paired difference (± its 95% half-width) agrees with the paper's
    direction: "agrees" or "opposite" where the interval excludes zero, else "within noise";
    for the paper's "0" (no difference), "consistent" within noise, else "differs"; for "?" (no
    direction given), "higher" or "lower" where resolved, else "within noise"."""
    if math.isnan(diff):
        return "—"
    resolved = stats.excludes_zero(diff, half)
    if expected == "?":
        return ("higher" if diff > 0 else "lower") if resolved else "within noise"
    if expected == "0":
        return "differs" if resolved else "consistent"
    if not resolved:
        return "within noise"
    return "agrees" if (diff > 0) == (expected == "+") else "opposite"


def _by_seed(rows: Sequence[Mapping[str, Any]], variant: str, metric: str) -> dict[int, float]:
    return {
        int(r["seed"]): r.get(metric)
        for r in rows
        if r["variant"] == variant and r.get("status", "ok") == "ok"
    }


def controls(paper: Mapping[str, Entry]) -> dict[str, str]:
    """variant -> the control ``paper`` names for it, where it names one."""
    return {variant: e[2] for variant, e in paper.items() if e[2] is not None}


def difference(
    rows: Sequence[Mapping[str, Any]], variant: str, control: str, metric: str
) -> tuple[float, float, int]:
    """The paired difference ``variant - control`` in ``metric`` over the seeds both ran."""
    return stats.paired_difference(_by_seed(rows, variant, metric), _by_seed(rows, control, metric))


def lines(
    table: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    paper: Mapping[str, Entry],
) -> list[str]:
    """results.md's "Against the paper" table: per variant of ``paper`` with finished runs, the
    paired difference in ``metric`` from its control (the first variant unless named) and the
    verdict."""
    entries = [e for e in table if e["variant"] in paper]
    if not entries:
        return []
    baseline = table[0]["variant"]
    out = [
        "",
        f"Against the paper ({metric}; the paper's direction of the variant against its control, "
        "the sweep's baseline unless another variant is named):",
        "",
        f"| variant | against | paper | where | measured Δ{metric} | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for e in entries:
        expected, source, control = paper[e["variant"]]
        if control is None:
            control = baseline
            diff, half = e[f"{metric}_diff"], e[f"{metric}_diff_ci"]
        else:
            diff, half, _ = difference(rows, e["variant"], control, metric)
        shown = stats.format_interval(diff, half, signed=True)
        out.append(
            f"| {e['variant']} | {control} | {expected} | {source} | {shown} | "
            f"{verdict(diff, half, expected)} |"
        )
    return out
