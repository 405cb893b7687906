"""A training run's metrics: WORKDIR/metrics.jsonl and TensorBoard event files.

One JSON object per line with ``step`` and the metric names; the same scalars go to
TensorBoard through tensorboardX (no TensorFlow). A resumed run first drops what a killed run
wrote past its last checkpoint, so each step is written once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping


class MetricWriter:
    """WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard event files."""

    def __init__(self, workdir: str, enabled: bool = True, *, start_step: int = 0):
        """``start_step``: the step the run (re)starts from. Rows of later steps, written by a
        run that died after its last checkpoint, are dropped from metrics.jsonl, and
        TensorBoard is told to purge its events from ``start_step + 1`` on, so a resumed run
        writes each step once."""
        self._enabled = enabled
        self._tb = None
        if enabled:
            path = os.path.join(workdir, "metrics.jsonl")
            _truncate_metrics(path, start_step)
            self._file = open(path, "a")  # noqa: SIM115
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(
                    os.path.join(workdir, "tensorboard"), purge_step=start_step + 1
                )
            except ImportError:  # pragma: no cover - tensorboardX is a dependency
                logging.warning("tensorboardX missing: no TensorBoard event files")

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self._enabled:
            return
        clean = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def _truncate_metrics(path: str, start_step: int) -> None:
    """Drops the rows of metrics.jsonl after ``start_step`` (atomically)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill: it is past the checkpoint
            logging.warning("%s:%d: unreadable row dropped on resume", path, number)
            continue
        if int(row.get("step", 0)) <= start_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        logging.info("%s: %d rows after step %d dropped", path, len(lines) - len(kept), start_step)
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
