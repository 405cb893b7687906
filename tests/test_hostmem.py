"""yolov4_jax.hostmem: freed memory is kept for reuse, so a step's buffers do not page-fault
in again every step (the cost it removes: docs/benchmarks.md)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates (malloc, as XLA:CPU does a step's buffers; numpy would ask for huge pages), touches
# and frees 256 MB twice, and prints the minor page faults of the second time.
PROGRAM = """
import ctypes, resource
import sys
import yolov4_jax
from yolov4_jax import hostmem
if sys.argv[1] == "apply":
    hostmem.apply_defaults()  # as the training program does
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def touch():
    block = libc.malloc(2**28)
    ctypes.memset(block, 1, 2**28)
    libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_time_faults(defaults: str, apply: bool = True) -> int:
    env = dict(os.environ, YOLOV4_JAX_MALLOC_DEFAULTS=defaults)
    out = subprocess.run(
        [sys.executable, "-c", PROGRAM, "apply" if apply else "import only"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_freed_buffers_are_reused_without_page_faults_unless_turned_off():
    pages = 2**28 // 4096  # the 256 MB block in 4 KiB pages
    assert _second_time_faults("1") < pages // 100
    assert _second_time_faults("0") > pages // 2  # glibc's defaults: unmapped, faulted again
    # Importing the package leaves malloc alone (the setting slows compilation down).
    assert _second_time_faults("1", apply=False) > pages // 2


def test_release_and_settings_are_safe_to_call():
    from yolov4_jax import hostmem

    applied = hostmem.keep_freed_memory()
    assert applied == (hostmem._libc() is not None)
    assert isinstance(hostmem.release(), bool)


def test_applied_only_where_jax_runs_on_the_cpu_alone(monkeypatch):
    from yolov4_jax import hostmem

    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not hostmem.cpu_only()
    monkeypatch.setenv("YOLOV4_JAX_MALLOC_DEFAULTS", "")
    assert not hostmem.apply_defaults()  # the step's buffers would be on the GPU
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert hostmem.cpu_only()
    monkeypatch.setenv("YOLOV4_JAX_MALLOC_DEFAULTS", "0")
    assert not hostmem.apply_defaults()
