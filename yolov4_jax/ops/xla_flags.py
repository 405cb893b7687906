"""XLA:CPU defaults the package sets at import, before JAX starts its backend.

YNNPACK fusions for reductions only (``--xla_cpu_experimental_ynn_fusion_type=reduce``). jaxlib
0.10 also sends the convolutions to YNNPACK by default, which on the project's CPU ran YOLOv4's
forward pass 1.5x and its training step 1.14x slower than XLA's own convolutions; YNNPACK's
reductions, on the other hand, replace XLA:CPU's rewrite of every long reduction into a tree
of 32-row reduce-windows, which made BatchNorm's statistics slow: with them YOLOv4's training
step was 7% faster and compiled 16% faster, the demo's 11% faster (docs/benchmarks.md). The
flag is read by the CPU compiler only; GPUs and TPUs are unaffected. It is appended to
``XLA_FLAGS`` unless ``XLA_FLAGS`` already names it, ``YOLOV4_JAX_XLA_DEFAULTS=0`` is set, or
jaxlib is older than 0.10 (where the flag may not exist and XLA would reject it).

This module imports neither JAX nor anything else of the package.
"""

from __future__ import annotations

import importlib.metadata
import os

YNN_REDUCE_ONLY = "--xla_cpu_experimental_ynn_fusion_type=reduce"


def apply() -> None:
    """Appends the CPU defaults to ``XLA_FLAGS`` (see the module docstring)."""
    if os.environ.get("YOLOV4_JAX_XLA_DEFAULTS", "1") == "0":
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_experimental_ynn_fusion_type" in flags:
        return
    try:
        major, minor = (int(p) for p in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return
    if (major, minor) >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {YNN_REDUCE_ONLY}".strip()
