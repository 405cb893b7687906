"""Orbax checkpoints of a training run: the latest ones and the best, each with the data position.

``WORKDIR/checkpoints/<step>/`` holds the last ``keep`` states (params, BN statistics, optimizer
state, EMA, step, RNG) and the grain iterator's position (JSON), written asynchronously;
``WORKDIR/best/<step>/`` holds the state (and data position) with the best
``eval/<best_metric>`` so far (orbax keeps the metric with it, so the choice survives restarts).
Resume reads the latest. A checkpoint that cannot be read, or does not fit the run, is a
`CheckpointError` naming its folder and what is wrong; with ``fallback`` the resume tries the
older ones, then ``best/``.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from yolov4_jax import Error
from yolov4_jax.models import factory


class CheckpointError(Error):
    """A checkpoint that cannot be read or does not fit the run; the message names its folder."""


def _key(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{key path: shape} of a tree's array leaves (attributes and dict keys alike)."""
    return {
        tuple(_key(k) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if hasattr(leaf, "shape")
    }


def _reason(error: BaseException) -> str:
    """One line out of orbax's and TensorStore's chained exceptions: the deepest status
    message (``OUT_OF_RANGE: ...``, ``NOT_FOUND: ...``), else the outermost first line."""
    chain, e = [], error
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(chain):
        text = str(e).strip()
        if re.match(r"[A-Z]+(_[A-Z]+)*: ", text):  # an absl status, as TensorStore raises
            return text.splitlines()[0][:300]
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"[:300]


class _QuietAsyncio:
    """Orbax's failed reads leave asyncio tasks and coroutines whose exceptions are printed,
    screens long, when they are garbage collected (some only at exit, ending in a misleading
    ``RuntimeError: Event loop is closed``); the restore's own error already says what went
    wrong, so after a failed read those leftovers are dropped, whenever they surface: the
    tasks that `asyncio.gather` abandoned may still be referenced (and so not collected)
    when the read fails, and be logged at exit (seen under load in CI)."""

    def __enter__(self):
        self._logger = logging.getLogger("asyncio")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            _drop_orbax_leftovers_from_now_on()
        gc.collect()  # the failed tasks are logged (and so silenced) now, not at exit
        self._logger.setLevel(self._level)


_previous_unraisablehook = sys.unraisablehook


def _drop_orbax_leftovers_from_now_on() -> None:
    """Installs (once) the unraisable hook and the asyncio log filter below."""
    global _previous_unraisablehook
    if sys.unraisablehook is not _drop_orbax_leftovers:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _drop_orbax_leftovers
    asyncio_logger = logging.getLogger("asyncio")
    if _keep_record not in asyncio_logger.filters:
        asyncio_logger.addFilter(_keep_record)


def _from_orbax(error: BaseException | None) -> bool:
    """Whether ``error`` (or an exception it chains) was raised through orbax's code, or is
    the closed event loop that orbax's abandoned tasks call back into."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        if "Event loop is closed" in str(error):
            return True
        tb = error.__traceback__
        while tb is not None:
            if "orbax" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    return False


def _drop_orbax_leftovers(unraisable) -> None:
    """`sys.unraisablehook` once a checkpoint read failed: orbax's abandoned coroutines and
    the closed event loop they call back into are not reported; anything else is."""
    code = getattr(unraisable.object, "cr_code", None)
    leftover = code is not None and "orbax" in code.co_filename
    if leftover or _from_orbax(unraisable.exc_value):
        return
    _previous_unraisablehook(unraisable)


def _keep_record(record: logging.LogRecord) -> bool:
    """asyncio's log filter once a checkpoint read failed: drops "Task exception was never
    retrieved" and "Task was destroyed but it is pending" for orbax's abandoned tasks."""
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()  # names the task's coroutine and where it was running
    pending = "destroyed but it is pending" in message and "orbax" in message
    return not (pending or _from_orbax(error))


class Checkpointer:
    def __init__(self, workdir: str, *, best_metric: str = "AP", keep: int = 2):
        if int(keep) < 1:
            raise CheckpointError(f"keep={keep}: at least one checkpoint must be kept")
        self.directory = os.path.join(workdir, "checkpoints")
        self.best_directory = os.path.join(workdir, "best")
        self._best_key = f"eval/{best_metric}"
        self._latest = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True),
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
            item_names=("state", "data"),
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
        data = ocp.args.JsonSave(json.loads(iterator.get_state().decode()))
        if self._latest.latest_step() != step:
            self._latest.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=data),
                force=force,
            )
        if metrics and self._best_key in metrics:
            self._best.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=data),
                metrics={self._best_key: float(metrics[self._best_key])},
                force=True,
            )

    def restore_latest(
        self, state: Any, iterator: Any | None = None, *, fallback: bool = False
    ) -> Any:
        """The latest checkpoint restored into ``state``'s structure and sharding (else
        ``state`` unchanged); the iterator is moved to the saved position.

        A latest checkpoint that cannot be read raises `CheckpointError` naming its folder and
        what is wrong; with ``fallback``, the older ones and then ``best/`` are tried in turn
        (each failure logged in one line). A checkpoint that does not fit the run (another
        model or dataset) raises at once: an older one would not fit either.
        """
        steps = sorted(self._latest.all_steps(), reverse=True)
        candidates = [(self._latest, self.directory, s) for s in steps]
        best = self._best.best_step() if fallback else None
        if best is not None:
            candidates.append((self._best, self.best_directory, best))
        failures = []
        for manager, directory, step in candidates:
            try:
                restored = self._restore(manager, directory, step, state, iterator)
            except _Unreadable as e:
                if not fallback:
                    older = f" (or step {steps[1]})" if len(steps) > 1 else ""
                    raise CheckpointError(
                        f"{e}. Remove that folder to resume from the previous checkpoint{older}, "
                        "or pass --config.train.restore_fallback=True to do so automatically"
                    ) from None
                logging.warning("cannot resume from %s; trying an older checkpoint", e)
                failures.append(str(e))
                continue
            if failures:
                logging.warning("resumed from %s", os.path.join(directory, str(step)))
            return restored
        if failures:
            raise CheckpointError(
                "no checkpoint could be read: "
                + "; ".join(failures)
                + ". Remove WORKDIR/checkpoints and WORKDIR/best to start over"
            )
        return state

    def restore(self, step: int, state: Any, iterator: Any | None = None) -> Any:
        """The latest manager's ``step`` restored into ``state``'s structure and sharding."""
        try:
            return self._restore(self._latest, self.directory, step, state, iterator)
        except _Unreadable as e:
            raise CheckpointError(str(e)) from None

    def _restore(self, manager, directory: str, step: int, state: Any, iterator: Any | None):
        path = os.path.join(directory, str(step))
        _check_files(path, with_data=iterator is not None)
        handler = ocp.StandardCheckpointHandler()
        try:
            with _QuietAsyncio():
                saved = handler.metadata(epath.Path(path) / "state")
        except Exception as e:  # noqa: BLE001 - orbax raises many kinds for a bad folder
            raise _Unreadable(f"{path}: cannot read its metadata ({_reason(e)})") from None
        finally:
            handler.close()
        saved = getattr(saved, "tree", saved)
        _check_fits(path, saved, state)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        items = {"state": ocp.args.StandardRestore(abstract)}
        if iterator is not None:
            items["data"] = ocp.args.JsonRestore()
        try:
            with _QuietAsyncio():
                restored = manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # noqa: BLE001
            raise _Unreadable(f"{path}: cannot be read ({_reason(e)})") from None
        if iterator is not None:
            try:
                iterator.set_state(json.dumps(restored["data"]).encode())
            except ValueError as e:
                raise CheckpointError(
                    f"{path}: its data position does not fit this run's dataset "
                    f"({' '.join(str(e).split())}); resume with the run's config.data.name and "
                    "config.data.data_dir, or start a new --workdir"
                ) from None
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


class _Unreadable(Exception):
    """A checkpoint folder that cannot be read (as opposed to one that does not fit)."""


def _check_files(path: str, with_data: bool) -> None:
    """What orbax reports late and obscurely, said first: an emptied folder, a missing part."""
    if not os.path.isdir(path) or not os.listdir(path):
        raise _Unreadable(f"{path}: the checkpoint folder is empty")
    needed = ["state/_METADATA", "state/manifest.ocdbt"] + (["data"] if with_data else [])
    missing = [n for n in needed if not os.path.exists(os.path.join(path, n))]
    if missing:
        raise _Unreadable(f"{path}: {', '.join(missing)} missing (an incomplete or damaged copy)")


def _check_fits(path: str, saved: Any, state: Any) -> None:
    """The saved parameters have the model's names and shapes (else another model or class
    count is being resumed: a `CheckpointError` naming the first difference)."""
    params = getattr(state, "params", None)
    if params is None or not isinstance(saved, Mapping) or "params" not in saved:
        return
    have, want = _shapes(saved["params"]), _shapes(params)
    for key in sorted(set(have) | set(want)):
        if have.get(key) != want.get(key):
            name = "/".join(key)
            raise CheckpointError(
                f"{path}: parameter {name} is {list(have[key]) if key in have else 'absent'} in "
                f"the checkpoint but {list(want[key]) if key in want else 'absent'} in this "
                "run's model (another model, width or class count); resume with the run's "
                "config and dataset, or start a new --workdir"
            )


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
