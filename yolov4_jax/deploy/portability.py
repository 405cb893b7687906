"""Does a lowered module run off the CPU? The custom calls it makes, and which are CPU-only.

A module lowered through `jax.export` for "cuda" or "tpu" can still hold a custom call that
only XLA:CPU implements (LAPACK's, DUCC's FFT, a CPU foreign function such as the project's
oneMKL convolutions) when a CPU-only choice reached the trace: a GPU or TPU host would then
fail to compile it, or, worse for an export, the user would only find out there. Targets are
read from the module's text; those known to be portable (sharding annotations, XLA's own
markers) are allowed, every other one is reported.
"""

from __future__ import annotations

import re

# Targets every XLA backend knows: sharding and placement annotations, XLA's own markers,
# jax.export's shape checks.
PORTABLE_TARGETS = frozenset(
    {
        "Sharding",
        "SPMDFullToShardShape",
        "SPMDShardToFullShape",
        "annotate_device_placement",
        "MoveToHost",
        "MoveToDevice",
        "AllocateBuffer",
        "LayoutConstraint",
        "shape_assertion",  # jax.export's checks of symbolic dimensions
    }
)
# Prefixes of custom-call targets registered for the CPU platform only (jaxlib's CPU kernels;
# the project's oneMKL convolutions register under "yolov4_").
CPU_ONLY_PREFIXES = ("lapack_", "ducc_", "cpu_", "yolov4_", "xla_cpu", "blas_")

_TARGET_PATTERNS = (
    re.compile(r"stablehlo\.custom_call\s+@([\w.$-]+)"),
    re.compile(r'call_target_name\s*=\s*"([^"]+)"'),
    re.compile(r'custom_call_target\s*=\s*"([^"]+)"'),
)


def custom_call_targets(module_text: str) -> set[str]:
    """The targets of every custom call in a StableHLO (or HLO) module's text."""
    found: set[str] = set()
    for pattern in _TARGET_PATTERNS:
        found.update(pattern.findall(module_text))
    return found


def non_portable_targets(module_text: str) -> list[str]:
    """Custom-call targets of the module that are not known to run on every platform,
    sorted; the CPU-only ones by prefix are marked "(CPU only)"."""
    bad = []
    for target in sorted(custom_call_targets(module_text) - PORTABLE_TARGETS):
        cpu = target.startswith(CPU_ONLY_PREFIXES)
        bad.append(f"{target} (CPU only)" if cpu else target)
    return bad
