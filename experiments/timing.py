"""The benchmarks' one timing loop, shared by their peer processes (nothing here imports JAX).

A call must itself wait for its result (`jax.block_until_ready` for JAX, whose calls return
before the computation ends). Where two engines alternate (JAX against PyTorch or OpenCV),
each round should start with one untimed call on each side: while one side runs the other
sits idle, and on this project's machine (a Firecracker guest that reports free memory to
its host) the host takes back memory an idle process has freed, so the first call after a
pause faults it in again (docs/benchmarks.md, "Settle steps").
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable


def timed_calls(
    call: Callable[[], object], iters: int, faults: list[int] | None = None
) -> list[float]:
    """Seconds taken by each of ``iters`` calls of ``call``; each call's minor page faults
    are appended to ``faults`` where it is given."""
    times = []
    for _ in range(iters):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if faults is not None:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return times
