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

from yolov4_jax.models import factory


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

    def restore_variables(self, which: str = "best") -> dict[str, Any]:
        """``{"params", "batch_stats"}`` for inference from the best or the latest checkpoint,
        without a template (the EMA weights when the run kept them)."""
        if which not in ("best", "latest"):
            raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
        manager = self._best if which == "best" else self._latest
        step = manager.best_step() if which == "best" else manager.latest_step()
        if step is None and which == "best":  # no evaluation yet: fall back to the latest
            manager, step = self._latest, self._latest.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory} or {self.best_directory}")
        state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
            "state"
        ]
        params = state["ema_params"] if state.get("ema_params") else state["params"]
        return {"params": params, "batch_stats": state["batch_stats"]}

    def wait(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._latest.close()
        self._best.close()


def load_for_inference(workdir: str, which: str = "best"):
    """``(config, model, variables, class_names)`` of a training run's workdir.

    Reads ``WORKDIR/config.json`` and ``WORKDIR/dataset.json`` (written when training starts)
    and the ``which`` ("best" or "latest") checkpoint; the dataset itself is not needed.
    """
    import ml_collections

    workdir = os.path.abspath(os.path.expanduser(workdir))
    paths = [os.path.join(workdir, name) for name in ("config.json", "dataset.json")]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} is missing: is {workdir} a training workdir?")
    with open(paths[0]) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(paths[1]) as f:
        class_names = list(json.load(f)["class_names"])
    model = factory.create_model(config.model, num_classes=len(class_names))
    checkpointer = Checkpointer(workdir, best_metric=config.train.best_metric)
    try:
        variables = checkpointer.restore_variables(which)
    finally:
        checkpointer.close()
    return config, model, jax.tree.map(jax.numpy.asarray, variables), class_names
