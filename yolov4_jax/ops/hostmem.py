"""Host memory: transparent huge pages for XLA:CPU's per-step buffers, and returning freed memory.

XLA:CPU allocates a step's buffers with malloc when the step starts and frees them when it
ends. glibc serves blocks above 32 MB with mmap and unmaps them on free, so each step faults
its large buffers in again (YOLOv4's 0.95 GB temp buffer at 416, batch 2: 250,000 minor
faults per step with 4 KiB pages on the project's 2-core CPU). glibc's tunable
``glibc.malloc.hugetlb=1`` makes malloc ask for transparent huge pages (``madvise``) for
those blocks and for its heaps, so a step faults 2 MiB at a time: about 1,300 faults per
YOLOv4 step, which took its step from 2.72 to 2.48-2.61 s (docs/benchmarks.md).

glibc reads tunables when a process starts, so `apply_defaults` restarts the training
program with it (`os.execve`: the same process id, interpreter, command line and
environment, plus the tunable in ``GLIBC_TUNABLES``), first thing, before JAX starts. It
does so only where it changes something: Linux with glibc, JAX on the CPU alone (`cpu_only`;
with a GPU or TPU the step's buffers live on the device), the kernel's huge pages set to
``madvise`` (with ``always`` they are used anyway, with ``never`` not at all), and
``GLIBC_TUNABLES`` not naming ``glibc.malloc.hugetlb`` already (a user's own choice stands).
``YOLOV4_JAX_MALLOC_DEFAULTS=0`` turns it off, ``=1`` on also with accelerators. Importing
the package changes nothing (tests and notebooks run with the malloc they started with).

Until 2026-12-05 the program kept freed memory instead (one malloc arena, no mmap, no
trimming): no faults, but the compiler's freed memory fragmented that one heap, every later
allocation walked glibc's bins (12% of a step's CPU samples in ``_int_malloc``), and XLA's
parallel code generation contended for the arena. Against it glibc's arenas with huge pages
made YOLOv4's step 1.2-1.3x faster and its compile 1.2x, and took the demo's step peak from
1.72 to 1.0 GB (docs/benchmarks.md, "Host malloc: glibc's arenas with huge pages").

`release` returns what is free at a moment (after building the train state, after
compiling), so the process's resident memory follows what it uses.

`collector_paused` holds back Python's cyclic garbage collector while a step is traced:
tracing YOLOv4's training step creates millions of short-lived objects, and the collections
they set off walk every live object (the model, JAX's caches) again and again. Paused, the
step's trace and lowering at 416 took 2.9-3.0 s instead of 4.0-4.5 s.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys
from collections.abc import Mapping

HUGE_PAGES = "glibc.malloc.hugetlb=1"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc() -> bool:
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


@functools.cache
def _libc():
    """glibc through ctypes, or None on other C libraries and systems."""
    if not _glibc():
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim"):
        return None
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    return libc


def release() -> bool:
    """Returns free heap memory to the kernel (`malloc_trim`); whether any was released."""
    libc = _libc()
    return bool(libc is not None and libc.malloc_trim(0))


@contextlib.contextmanager
def collector_paused():
    """Python's cyclic garbage collector off inside the block (for calls that may trace and
    compile a step), back to what it was after it. Reference counting still frees what is
    not in a cycle; the cycles made meanwhile are collected at the next collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def cpu_only() -> bool:
    """Whether JAX can run on the CPU only here: ``JAX_PLATFORMS`` names no other platform,
    or, unset, no GPU/TPU plugin is installed (checked without starting JAX)."""
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",")} <= {"cpu"}
    if any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu")):
        return False
    return not importlib.metadata.entry_points(group="jax_plugins")


def thp_mode(path: str = THP_SETTING) -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``), or None
    where it cannot be read."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


def huge_pages_environment(environ: Mapping[str, str], mode: str | None) -> dict | None:
    """``environ`` with `HUGE_PAGES` added to ``GLIBC_TUNABLES``, or None where that would
    change nothing: huge pages not in ``madvise`` mode, or the tunable already named."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if mode != "madvise" or "glibc.malloc.hugetlb=" in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES}


def huge_pages() -> bool:
    """Whether this process's malloc was started with `HUGE_PAGES`."""
    return HUGE_PAGES in os.environ.get("GLIBC_TUNABLES", "").split(":")


def apply_defaults() -> bool:
    """Restarts this program with `HUGE_PAGES` where that helps (see the module's docstring)
    and returns only where it does not: whether malloc uses huge pages. Call it first thing,
    before JAX starts; the restarted process calls it again and goes on."""
    setting = os.environ.get("YOLOV4_JAX_MALLOC_DEFAULTS", "")
    wanted = _glibc() and (setting == "1" or (setting != "0" and cpu_only()))
    environ = huge_pages_environment(os.environ, thp_mode()) if wanted else None
    if environ is None:
        return huge_pages()
    argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, environ)
    except OSError as e:  # no restart: the program runs on, with 4 KiB pages
        logging.warning("could not restart %s with %s: %s", argv, HUGE_PAGES, e)
    return False
