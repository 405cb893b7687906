"""Orbax checkpoints of a training run: the latest and the best, each with the data position.

``WORKDIR/checkpoints/<step>/`` holds the latest state (params, BN statistics, optimizer
state, EMA, step, RNG) and the grain iterator's position (JSON), written asynchronously;
``WORKDIR/best/<step>/`` holds the state with the best ``eval/<best_metric>`` so far (orbax
keeps the metric with it, so the choice survives restarts). Resume reads the latest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, workdir: str, *, best_metric: str = "AP", keep: int = 1):
        self.directory = os.path.join(workdir, "checkpoints")
        self.best_directory = os.path.join(workdir, "best")
        self._best_key = f"eval/{best_metric}"
        self._latest = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_names=("state", "data"),
        )
        self._best = ocp.CheckpointManager(
            self.best_directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1,
                create=True,
                best_fn=lambda m: m[self._best_key],
                best_mode="max",
                keep_checkpoints_without_metrics=False,
            ),
            item_names=("state",),
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def save(
        self,
        step: int,
        state: Any,
        iterator: Any,
        metrics: Mapping[str, float] | None = None,
        *,
        force: bool = False,
    ) -> None:
        """Saves the latest (asynchronously); with metrics, also the best if it improved."""
        if self._latest.latest_step() != step:
            data_state = json.loads(iterator.get_state().decode())
            self._latest.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
                ),
                force=force,
            )
        if metrics and self._best_key in metrics:
            self._best.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                metrics={self._best_key: float(metrics[self._best_key])},
                force=True,
            )

    def restore_latest(self, state: Any, iterator: Any | None = None) -> Any:
        """The latest checkpoint restored into ``state``'s structure and sharding (else
        ``state`` unchanged); the iterator is moved to the saved position."""
        step = self._latest.latest_step()
        if step is None:
            return state
        return self.restore(step, state, iterator)

    def restore(self, step: int, state: Any, iterator: Any | None = None) -> Any:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if iterator is not None:
            items["data"] = ocp.args.JsonRestore()
        restored = self._latest.restore(step, args=ocp.args.Composite(**items))
        if iterator is not None:
            iterator.set_state(json.dumps(restored["data"]).encode())
        return restored["state"]

    def restore_best(self, state: Any) -> Any:
        """The best checkpoint's state (``state`` gives structure and sharding)."""
        step = self._best.best_step()
        if step is None:
            raise FileNotFoundError(f"no best checkpoint in {self.best_directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        return self._best.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )["state"]

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()
