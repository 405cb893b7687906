"""yolov4_jax.ops.hostmem: the training program restarts itself with glibc's huge-page tunable, so
a step's large buffers fault in 2 MiB at a time (the cost it removes: docs/benchmarks.md);
Python's collector is paused while a step traces."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from yolov4_jax.ops import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# As the training program starts (apply_defaults first), then allocates (malloc, as XLA:CPU
# does a step's buffers), touches and frees 256 MB twice; prints its process id, whether
# malloc has huge pages, and the minor page faults of the second time.
PROGRAM = """
import ctypes, os, resource, sys
from yolov4_jax.ops import hostmem
if sys.argv[1] == "apply":
    hostmem.apply_defaults()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
def touch():
    block = libc.malloc(2**28)
    ctypes.memset(block, 1, 2**28)
    libc.free(block)
touch()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
touch()
print(os.getpid(), hostmem.huge_pages(), faults() - before)
"""


def _run(defaults: str, apply: bool = True) -> tuple[bool, int]:
    env = dict(os.environ, YOLOV4_JAX_MALLOC_DEFAULTS=defaults, JAX_PLATFORMS="cpu")
    env.pop("GLIBC_TUNABLES", None)
    child = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, "apply" if apply else "import only"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = child.communicate()
    assert child.returncode == 0, err[-2000:]
    pid, huge, faults = out.split()
    assert int(pid) == child.pid  # restarted in place: the same process
    return huge == "True", int(faults)


@pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.libc_ver()[0] != "glibc"
    or hostmem.thp_mode() != "madvise",
    reason="glibc with transparent huge pages on madvise only",
)
def test_restart_gives_large_blocks_huge_pages_unless_turned_off():
    pages = 2**28 // 4096  # the 256 MB block in 4 KiB pages
    huge, faults = _run("")
    assert huge and faults < pages // 50  # about 128 faults of 2 MiB
    huge, faults = _run("0")
    assert not huge and faults > pages // 2  # glibc's defaults: unmapped, faulted again
    # Importing the package leaves malloc alone.
    huge, faults = _run("", apply=False)
    assert not huge and faults > pages // 2


def test_tunable_added_only_where_it_changes_something():
    env = hostmem.huge_pages_environment({"PATH": "/bin"}, "madvise")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": hostmem.HUGE_PAGES}
    env = hostmem.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.check=3"}, "madvise")
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.check=3:{hostmem.HUGE_PAGES}"
    # A user's own choice stands; with "always" or "never" the tunable changes nothing.
    assert (
        hostmem.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "madvise")
        is None
    )
    assert hostmem.huge_pages_environment({}, "always") is None
    assert hostmem.huge_pages_environment({}, "never") is None
    assert hostmem.huge_pages_environment({}, None) is None


def test_thp_mode_read_from_the_kernel_setting(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert hostmem.thp_mode(str(setting)) == "madvise"
    assert hostmem.thp_mode(str(tmp_path / "missing")) is None


def test_applied_only_where_jax_runs_on_the_cpu_alone(monkeypatch):
    def no_restart(*args):
        raise AssertionError(f"restarted: {args}")

    monkeypatch.setattr(os, "execve", no_restart)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not hostmem.cpu_only()
    monkeypatch.setenv("YOLOV4_JAX_MALLOC_DEFAULTS", "")
    assert not hostmem.apply_defaults()  # the step's buffers would be on the GPU
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert hostmem.cpu_only()
    monkeypatch.setenv("YOLOV4_JAX_MALLOC_DEFAULTS", "0")
    assert not hostmem.apply_defaults()
    monkeypatch.setenv("GLIBC_TUNABLES", hostmem.HUGE_PAGES)  # as after the restart
    monkeypatch.setenv("YOLOV4_JAX_MALLOC_DEFAULTS", "")
    assert hostmem.apply_defaults()


# 160 MB of small blocks freed under a live one stay in the heap until `release`. Run in a
# fresh process: in a test worker other threads (XLA's) allocate meanwhile, and the blocks
# would partly fill the worker's earlier heap holes, so its RSS is not the blocks' alone.
RELEASE = """
import ctypes, ctypes.util, os
from yolov4_jax.ops import hostmem
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
blocks = [libc.malloc(4096) for _ in range(40_000)]
for block in blocks:
    ctypes.memset(block, 1, 4096)
for block in blocks[:-1]:  # the last, next to the heap's top, stays: free() cannot trim
    libc.free(block)
freed = rss()
released = hostmem.release()
print(released, freed, rss())
"""


def test_release_returns_freed_heap_to_the_kernel():
    env = dict(os.environ, YOLOV4_JAX_MALLOC_DEFAULTS="0", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", RELEASE], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    released, before, after = out.stdout.split()
    assert released == "True"
    assert int(after) < int(before) - 100 * 2**20  # most of the 160 MB


def test_collector_paused_inside_and_restored_after():
    import gc

    assert gc.isenabled()
    with hostmem.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), hostmem.collector_paused():
        raise RuntimeError("a failed trace")
    assert gc.isenabled()
    gc.disable()  # a caller's own choice stands
    try:
        with hostmem.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
