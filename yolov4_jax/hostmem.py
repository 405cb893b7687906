"""Host memory: glibc malloc settings for XLA:CPU's per-step buffers, and returning freed memory.

XLA:CPU allocates a step's buffers (activations, gradients: 2.2 GB for YOLOv4 at 416, batch
2) with malloc when the step starts and frees them when it ends. With glibc's defaults
those blocks are mmap'd and unmapped every step, or come from per-thread arenas that hand
them back to the kernel, so every step page-faults its whole working set in again: 630,000
minor faults and 1.3-1.8 s of kernel time per YOLOv4 step on the project's 2-core CPU
(docs/benchmarks.md). `keep_freed_memory` makes malloc keep them instead (one arena, no mmap
for large blocks, no automatic trimming), after which a step takes no page faults; `release`
returns what is free at that moment (after building the train state, after compiling), so
the process's resident memory follows what it uses.

The price is memory: freed blocks stay resident, and small allocations made between steps
can split a kept block, so the heap grows by a step's working set now and then before it
levels off (the demo's step held 1.7 GB after 50 steps instead of 1.0 GB, and stayed there
over 150 steps; the 750-step demo run peaked at 2.4 GB). For YOLOv4 the faults cost more than
that: its step peak went down (3.45 -> 3.30 GB, the trims) and the step 14% faster.

A second price is compile time: with one arena, XLA's parallel code generation contends for
it (YOLOv4's step compiled in 28.7 s instead of 22.6, the demo's in 15-16 s instead of
13-14). So the package does not apply it on import (tests and notebooks mostly compile);
the training program (`yolov4_jax.main`) and experiments/benchmark_train.py call
`apply_defaults` first thing, before JAX starts its CPU backend's threads (which then share
the one arena; Linux with glibc only), where JAX can only run on the CPU (`cpu_only`): with
a GPU or TPU the step's buffers live on the device and the setting would only keep host
memory. ``YOLOV4_JAX_MALLOC_DEFAULTS=0`` turns it off there, ``=1`` on also with
accelerators. It is a host setting: the model and the step are unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import importlib.metadata
import importlib.util
import os
import platform

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8


@functools.cache
def _libc():
    """glibc through ctypes, or None on other C libraries and systems."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return libc


def keep_freed_memory() -> bool:
    """Keeps freed blocks for reuse: one malloc arena for all threads, large blocks from the
    heap rather than mmap, no trimming on free. Returns whether it was applied (glibc only).

    Threads that already allocated keep their own arena: call it before JAX's first
    computation (importing `yolov4_jax` does)."""
    libc = _libc()
    if libc is None:
        return False
    ok = libc.mallopt(M_ARENA_MAX, 1) == 1
    ok &= libc.mallopt(M_MMAP_MAX, 0) == 1
    ok &= libc.mallopt(M_TRIM_THRESHOLD, -1) == 1  # -1: never trim on free (man mallopt)
    return bool(ok)


def release() -> bool:
    """Returns free heap memory to the kernel (`malloc_trim`); whether any was released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


def cpu_only() -> bool:
    """Whether JAX can run on the CPU only here: ``JAX_PLATFORMS`` names no other platform,
    or, unset, no GPU/TPU plugin is installed (checked without starting JAX)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",")} <= {"cpu"}
    if any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu")):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def apply_defaults() -> bool:
    """`keep_freed_memory` where JAX runs on the CPU only (`cpu_only`), unless
    ``YOLOV4_JAX_MALLOC_DEFAULTS`` is 0 (never) or 1 (also with accelerators)."""
    setting = os.environ.get("YOLOV4_JAX_MALLOC_DEFAULTS", "")
    if setting == "0" or (setting != "1" and not cpu_only()):
        return False
    return keep_freed_memory()
