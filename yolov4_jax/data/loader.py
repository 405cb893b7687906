"""grain DataLoaders over a step source, and their clean-up (worker processes, shared memory).

Each element of a loader is one whole batch: `StepSource` yields the step number ``k`` and the
batch transform (`pipeline`, `classification`) builds batch ``k`` by random access.
"""

from __future__ import annotations

import atexit
import gc
from typing import Any

import grain

try:  # grain's queue of shared-memory deletions (see `release_shared_memory`)
    from grain._src.python.ipc import shared_memory_array  # grain 0.2.18
except ImportError:  # pragma: no cover - grain 0.2.13, the last for Python 3.10
    from grain._src.python import shared_memory_array


_STREAM_LENGTH = 2**62  # "infinite" number of training steps


class StepSource:
    """A random-access source whose record ``k`` is ``k``: grain's unit of work is a batch."""

    def __init__(self, length: int, description: str):
        self._length = length
        self._description = description

    def __repr__(self) -> str:
        # grain compares this repr when restoring a checkpointed iterator state.
        return f"StepSource({self._description}, length={self._length})"

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, key: int) -> int:
        return int(key)


_RELEASE_AT_EXIT = False


def loader(transform: grain.transforms.Map, num_steps: int | None, workers: int) -> Any:
    """An iterator of ``transform(k)`` for k = 0, 1, ... (``num_steps`` of them, or endless),
    built by ``workers`` processes (0: in this one). Close it with `close_iterator`."""
    if workers > 0:
        # grain 0.2.18 reads absl flags in its worker processes; outside absl.app.run they
        # are unparsed and it raises.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        global _RELEASE_AT_EXIT
        if not _RELEASE_AT_EXIT:
            atexit.register(release_shared_memory)
            _RELEASE_AT_EXIT = True
    sampler = grain.samplers.IndexSampler(
        num_records=num_steps or _STREAM_LENGTH,
        shard_options=grain.sharding.NoSharding(),
        shuffle=False,
        num_epochs=1,
    )
    loader = grain.DataLoader(
        data_source=StepSource(num_steps or _STREAM_LENGTH, transform.description),
        sampler=sampler,
        operations=[transform],
        worker_count=workers,
        worker_buffer_size=2,
        read_options=grain.ReadOptions(num_threads=1, prefetch_buffer_size=2),
    )
    return iter(loader)


def close_iterator(iterator: Any) -> None:
    """Stops a loader iterator's worker processes and unlinks the shared memory of its batches
    (else Python's resource tracker warns of leaked shared_memory objects at exit: grain issue
    #1031). Idempotent; every iterator a run makes ends here."""
    # grain 0.2.18: close() stops the whole chain; grain 0.2.13 (Python 3.10) has no close()
    # there, and its worker pool stops with stop_prefetch(), so each link is visited.
    pending, seen = [iterator], set()
    while pending:
        node = pending.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for method in ("close", "stop_prefetch"):
            if callable(getattr(node, method, None)):
                getattr(node, method)()
                break
        pending += list(getattr(node, "_parents", None) or [])
        pending += [getattr(node, name, None) for name in ("_iterator", "_raw_iterator")]
    release_shared_memory()


def release_shared_memory() -> None:
    """Unlinks, now, the shared memory of the worker batches no longer referenced.

    A batch from a worker process lives in shared memory that grain unlinks when the array is
    garbage collected, on background threads; at exit their queue is dropped, and an array
    still alive then is never unlinked (its ``__del__`` runs after module teardown). So:
    collect, switch grain to deleting at once (the next worker pool switches it back), and
    wait for the deletions already queued. Also run at exit (`loader` registers it), after the
    program's last batch is released.
    """
    gc.collect()
    arrays = shared_memory_array.SharedMemoryArray
    pool = getattr(arrays, "_del_thread_pool", None)
    if pool is None:
        return
    arrays._del_thread_pool = None  # __del__ now unlinks in the calling thread
    arrays._outstanding_del_requests = None
    pool.close()
    pool.join()
