"""Confidence intervals for sweep results: a mean over seeds, and a paired difference.

Student's t intervals at 95%: ``mean ± t(0.975, n - 1) * sd / sqrt(n)``. A variant's paired
difference from the baseline is taken seed by seed over the seeds both have (the same seed gives
the same data order and, where the architecture agrees, the same initialisation), so the spread
that seeds share cancels. No SciPy: the t quantiles are tabulated (n - 1 <= 30) or from the
Cornish-Fisher expansion (error < 1e-3 beyond).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# t(0.975, dof) for dof = 1..30.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with ``dof`` degrees of freedom (NaN below 1)."""
    if dof < 1:
        return math.nan
    if dof <= len(_T975):
        return _T975[dof - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def _clean(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def mean_ci(values: Sequence[float | None]) -> tuple[float, float, int]:
    """(mean, half-width of its 95% interval, n); the half-width is NaN for n < 2."""
    xs = _clean(values)
    n = len(xs)
    if not n:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan, n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, t975(n - 1) * sd / math.sqrt(n), n


def paired_difference(
    variant: Mapping[int, float | None], baseline: Mapping[int, float | None]
) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) of ``variant[seed] - baseline[seed]`` over their shared seeds."""
    diffs = []
    for seed in sorted(set(variant) & set(baseline)):
        a, b = variant[seed], baseline[seed]
        if a is None or b is None or math.isnan(a) or math.isnan(b):
            continue
        diffs.append(a - b)
    return mean_ci(diffs)


def excludes_zero(mean: float, half_width: float) -> bool:
    """Whether the interval mean ± half_width lies wholly on one side of zero."""
    return not math.isnan(half_width) and abs(mean) > half_width


def format_interval(mean: float, half: float, signed: bool = False) -> str:
    """``0.225 ± 0.017`` (``+0.012 ± 0.008`` signed); without the interval for one seed, "—"
    for no value."""
    if math.isnan(mean):
        return "—"
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return text if math.isnan(half) else f"{text} ± {half:.3f}"
