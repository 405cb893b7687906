"""A sweep run's ``result.json``, its wall time over resumes, and copying a finished run into
another sweep (``--reuse``).

Each record keeps the run's requested config (`config_record`), so a sweep can find a finished
run of another sweep with the same config and copy it instead of training it again.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

WALL_FILE = "wall_s.json"


class Stopwatch:
    """A run's wall time summed over every process that trained it, resumes included.

    The total lives in ``run_dir/wall_s.json``: a new process starts from the total found
    there and a daemon thread rewrites it every ``every`` seconds (and on exit), so a process
    killed outright (SIGKILL, a lost machine) loses at most ``every`` seconds of the count.
    """

    def __init__(self, run_dir: str, every: float = 30.0, clock=time.monotonic):
        self.path = os.path.join(run_dir, WALL_FILE)
        self.every, self.clock = every, clock
        self.before = 0.0
        try:
            with open(self.path) as f:
                self.before = float(json.load(f)["wall_s"])
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no earlier process (or an unreadable count: this process's time only)
        self.start = self.clock()
        self.end: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def total(self) -> float:
        end = self.clock() if self.end is None else self.end
        return self.before + end - self.start

    def _write(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"wall_s": round(self.total(), 1)}, f)
        os.replace(tmp, self.path)

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            self._write()

    def __enter__(self) -> Stopwatch:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.end = self.clock()
        self._write()


def config_record(config) -> dict[str, Any]:
    """The requested config as its run's ``result.json`` keeps it (`find_reusable`)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


def find_reusable(config, reuse: Sequence[str]) -> str | None:
    """The run directory of a finished run (status ok) in one of the ``reuse`` workdirs whose
    requested config, kept in its ``result.json``, is ``config``; None if there is none."""
    target = config_record(config)
    for workdir in reuse:
        if not os.path.isdir(workdir):
            continue
        for name in sorted(os.listdir(workdir)):
            run_dir = os.path.join(workdir, name, f"seed{config.seed}")
            try:
                with open(os.path.join(run_dir, "result.json")) as f:
                    found = json.load(f)
            except (OSError, ValueError):
                continue
            if found.get("status") == "ok" and found.get("config") == target:
                return run_dir
    return None


def copy_run(source: str, run_dir: str, record: Mapping[str, Any]) -> None:
    """Copies a finished run's records (not its checkpoints) into ``run_dir`` and writes its
    ``result.json`` as ``record`` plus the source's metrics and ``reused_from``."""
    os.makedirs(run_dir, exist_ok=True)
    for name in os.listdir(source):
        path = os.path.join(source, name)
        if os.path.isfile(path) and name != "result.json":
            shutil.copy2(path, os.path.join(run_dir, name))
    with open(os.path.join(source, "result.json")) as f:
        found = json.load(f)
    keep = {k: v for k, v in found.items() if k not in record}
    out = {**record, **keep, "reused_from": os.path.relpath(source, os.path.dirname(run_dir))}
    write_result(run_dir, out)


def write_result(run_dir: str, record: Mapping[str, Any]) -> None:
    tmp = os.path.join(run_dir, "result.json.tmp")
    with open(tmp, "w") as f:  # atomic: a collecting task never reads half a file
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(run_dir, "result.json"))
