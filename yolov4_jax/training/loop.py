"""The train loop behind `python -m yolov4_jax.main`: `train_and_evaluate(config, workdir)`.

It owns everything around the step (`yolov4_jax.training.step`): the data mesh, the grain
iterator, orbax checkpoints (state and iterator position; the latest and the best are kept;
resume is automatic; SIGTERM saves and exits), metrics (WORKDIR/metrics.jsonl and TensorBoard
event files), a progress bar, periodic evaluation and a picture of detections at the end.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from yolov4_jax import ConfigError, Error
from yolov4_jax import data as data_lib
from yolov4_jax.models import factory, output_shapes, specs
from yolov4_jax.ops import hostmem
from yolov4_jax.training import checkpoints, metric_writer, optim, tasks
from yolov4_jax.training.state import create_train_state, eval_variables
from yolov4_jax.training.step import global_batch, make_mesh, make_train_step

Array = jax.Array


class _Preemption:
    """Turns SIGTERM into a flag the loop checks once per step (save, then exit)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class NonFiniteLossError(Error, FloatingPointError):
    """A non-finite loss or gradient; the message names the step and the last good checkpoint."""


def _check_batch(config: ml_collections.ConfigDict, num_devices: int) -> None:
    b, s = config.data.batch_size, config.optim.subdivisions
    if not b >= 1:
        raise ConfigError(f"config.data.batch_size={b}: expected a positive number of images")
    if s < 1 or b % (s * num_devices) and not config.data.dynamic_minibatch:
        raise ConfigError(
            f"config.data.batch_size={b} must be divisible by config.optim.subdivisions={s} "
            f"times the {num_devices} devices"
        )


def check_config(config: ml_collections.ConfigDict, model) -> None:
    """The values a run would otherwise trip over late (or silently): checked before anything
    is written or compiled. Raises ConfigError naming the field and what it expects."""
    o, d = config.optim, config.data
    if not (math.isfinite(o.learning_rate) and o.learning_rate > 0):
        raise ConfigError(
            f"config.optim.learning_rate={o.learning_rate}: expected a positive number"
        )
    if not int(o.max_batches) >= 1:
        raise ConfigError(f"config.optim.max_batches={o.max_batches}: expected at least 1 update")
    if not model.heads:
        return
    # Each [yolo] head's grid must tile the canvas: sides multiple of the largest stride.
    probe = 32 * 19
    shapes = output_shapes(model.layers, probe, probe)
    heads = [i for i, s in enumerate(model.layers) if isinstance(s, specs.Yolo)]
    stride = max(probe // shapes[i][0] for i in heads)
    sizes = {"config.data.image_size": d.image_size}
    if d.eval_image_size:
        sizes["config.data.eval_image_size"] = d.eval_image_size
    if d.random_shapes:
        sizes["config.data.random_shapes_step"] = d.random_shapes_step
    for field, size in sizes.items():
        if not (int(size) >= stride and int(size) % stride == 0):
            raise ConfigError(
                f"{field}={size}: expected a positive multiple of the network's largest "
                f"stride, {stride}"
            )


def check_splits(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> None:
    """The dataset has a train split and the split evaluation reads (unless there is none)."""
    splits = sorted(info.split_sizes)
    if "train" not in info.split_sizes:
        raise ConfigError(f"dataset {info.name!r} has no 'train' split (it has {splits})")
    split = config.train.eval_split
    if split and split not in info.split_sizes:
        raise ConfigError(
            f"config.train.eval_split={split!r}: dataset {info.name!r} has no such split (it "
            f"has {splits}). Prepare one (python -m yolov4_jax.data.prepare ... "
            "--val-fraction 0.1, or --val-images DIR), name one of its splits, or set "
            "--config.train.eval_split='' to train without evaluation"
        )


def check_workdir(workdir: str, config: ml_collections.ConfigDict, info) -> None:
    """A workdir with a run in it is resumed only with that run's task and classes."""
    path = os.path.join(workdir, "dataset.json")
    if not os.path.exists(path):
        return
    try:
        with open(path) as f:
            saved = json.load(f)
        names = list(saved["class_names"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); is {workdir} a training workdir?") from None
    this_task = config.get("task", "detection")
    task = saved.get("task", this_task)
    if names != list(info.class_names) or task != this_task:
        raise ConfigError(
            f"{workdir} holds a {task} run on {saved.get('name')!r} ({len(names)} classes); this "
            f"config trains {this_task} on {info.name!r} ({info.num_classes} classes). Resume "
            "with the run's dataset, or start a new --workdir"
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates.

    ``stop_at_step`` ends this run early at that step with a checkpoint, as a preemption
    would (for time-boxed jobs; the schedule still follows ``optim.max_batches``).
    Returns the final evaluation's metrics (``eval/...`` keys); empty if the run stopped
    before ``optim.max_batches`` (SIGTERM, ``stop_at_step``), whatever it evaluated on the way
    (callers such as the sweeps read metrics as "finished"), or if it evaluates nothing.

    Everything that can be checked is checked before the workdir is touched; its records
    (config.json, dataset.json, metrics) change only once the restore and the first step have
    succeeded, so a run that refuses, or fails before its first step, leaves the workdir as it
    was (a new one is removed).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    _check_batch(config, mesh.devices.size)

    info = data_lib.dataset_info(config)
    if config.get("task", "detection") == "detection" and (
        int(config.model.num_classes) != info.num_classes
    ):
        logging.info(
            "the model predicts the %d classes of %s (config.model.num_classes=%s applies "
            "only where there is no dataset)",
            info.num_classes,
            info.name,
            config.model.num_classes,
        )
    tasks.check_dataset(config, info)
    check_splits(config, info)
    model = factory.create_model(config.model, num_classes=info.num_classes)
    check_config(config, model)
    check_workdir(workdir, config, info)
    created = not os.path.exists(workdir)
    os.makedirs(workdir, exist_ok=True)  # only once the run's values are known to be usable
    run = _Run(workdir, config, info, model, mesh, stop_at_step)
    try:
        return run.train()
    except BaseException:
        if created and not run.started and is_main:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


class _Run:
    """One call of `train_and_evaluate` once its checks have passed."""

    def __init__(self, workdir, config, info, model, mesh, stop_at_step):
        self.workdir, self.info, self.model, self.mesh = workdir, info, model, mesh
        self.stop_at_step = stop_at_step
        self.started = False  # the workdir's records were written
        # data.jitter / data.resize left at None follow the last [yolo] head, as in darknet.
        self.config = data_lib.with_head_augmentation(config, model.heads)

    def _write_records(self) -> None:
        with open(os.path.join(self.workdir, "config.json"), "w") as f:
            f.write(self.config.to_json_best_effort(indent=2, sort_keys=True))
        with open(os.path.join(self.workdir, "dataset.json"), "w") as f:
            json.dump(
                {
                    "name": self.info.name,
                    "task": self.config.task,
                    "class_names": list(self.info.class_names),
                },
                f,
                indent=1,
            )

    def train(self) -> dict[str, float]:
        config, info, model, mesh, workdir = (
            self.config,
            self.info,
            self.model,
            self.mesh,
            self.workdir,
        )
        is_main = jax.process_index() == 0
        task = tasks.create(config, model)
        total_steps = int(config.optim.max_batches)
        tx, schedule = optim.make_optimizer(
            config.optim, global_batch_size=config.data.batch_size, total_steps=total_steps
        )
        replicated = NamedSharding(mesh, P())
        state = jax.device_put(
            create_train_state(model, config, tx, jax.random.PRNGKey(config.seed)), replicated
        )
        hostmem.release()  # what init freed (see yolov4_jax.ops.hostmem)
        tc = config.train
        train_iter = task.train_iterator(
            config,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            seed=config.seed,
            batch_multiple=jax.local_device_count() * config.optim.subdivisions,
        )
        ckpt = writer = progress = None
        try:
            ckpt = checkpoints.Checkpointer(
                workdir, best_metric=tc.best_metric, keep=tc.keep_checkpoints
            )
            state = ckpt.restore_latest(state, train_iter, fallback=tc.restore_fallback)
            start_step = int(jax.device_get(state.step))
            if start_step:
                logging.info("resumed from %s at step %d", ckpt.directory, start_step)
            train_step = make_train_step(model, config, tx, schedule, mesh)

            def evaluator(state):
                return task.evaluate(eval_variables(state), config, info, mesh)

            eval_metrics: dict[str, float] = {}
            pending: list[tuple[int, dict[str, Array]]] = []
            step = start_step
            last_time, last_step = time.time(), step
            images_seen = 0
            with _Preemption() as preemption:
                while step < total_steps:
                    local = next(train_iter)
                    images_seen += local["image"].shape[0] * jax.process_count()
                    with hostmem.collector_paused():  # the first call (and a new shape) traces
                        state, metrics = train_step(state, global_batch(local, mesh))
                    step += 1
                    if step == start_step + 1:
                        hostmem.release()  # what the compiler freed
                        # The run is known to start: only now is the workdir's record changed.
                        if is_main:
                            self._write_records()
                        self.started = True
                        writer = metric_writer.MetricWriter(
                            workdir, enabled=is_main, start_step=start_step
                        )
                        progress = _progress_bar(is_main, start_step, total_steps)
                    pending.append((step, metrics))
                    at_end = step == total_steps
                    do_eval = bool(tc.eval_split) and (
                        at_end or (tc.eval_every and step % tc.eval_every == 0)
                    )
                    # Read once per step: a SIGTERM arriving mid-step is handled at the next
                    # one, never half (a break without the save).
                    preempted = preemption.requested
                    log_now = step % tc.log_every == 0 or at_end or preempted
                    stopping = self.stop_at_step is not None and step >= self.stop_at_step
                    scheduled = step % tc.checkpoint_every == 0 or preempted
                    saving = do_eval or at_end or scheduled
                    # Every update is checked: this one when the step waits for the device
                    # anyway (logging, saving), so nothing is saved after a skipped update;
                    # otherwise the previous one, finished by now, so the check does not
                    # stall the device.
                    _check_finite(
                        pending[-1:] if log_now or saving or stopping else pending[-2:-1], ckpt
                    )
                    if log_now:
                        now = time.time()
                        summary = _summarise(pending)
                        elapsed = max(now - last_time, 1e-9)
                        summary["train/images_per_sec"] = images_seen / elapsed
                        summary["train/steps_per_sec"] = (step - last_step) / elapsed
                        writer.write(step, summary)
                        progress.update(step - last_step)
                        progress.set_postfix(_postfix(summary, task.progress_keys), refresh=False)
                        pending, last_time, last_step, images_seen = [], now, step, 0
                    if saving:
                        # Saved before evaluating, so a failed evaluation loses no update.
                        ckpt.save(step, state, train_iter, force=do_eval or at_end)
                    if do_eval:
                        eval_metrics = evaluator(state)
                        writer.write(step, eval_metrics)
                        ckpt.save(step, state, train_iter, eval_metrics, force=True)
                        if is_main:
                            logging.info("step %d: %s", step, _format_eval(eval_metrics))
                    if preempted:
                        logging.warning("SIGTERM: saved step %d in %s, exiting", step, workdir)
                        break
                    if stopping and not at_end:
                        ckpt.save(step, state, train_iter)
                        break
        finally:
            for closing in (progress, ckpt, writer):
                if closing is not None:
                    closing.close()
            data_lib.close_iterator(train_iter)
        if step < total_steps:
            return {}  # stopped early: the evaluations on the way are in metrics.jsonl
        if is_main and tc.eval_split:
            task.finish(eval_variables(state), config, info, workdir)
        return eval_metrics


def _progress_bar(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True)


def _check_finite(pending, ckpt) -> None:
    """Stops the run at the first of the `pending` (step, metrics) whose update was not finite."""
    flags = jax.device_get([m["finite"] for _, m in pending])
    for (step, metrics), finite in zip(pending, flags, strict=True):
        if not bool(finite):
            m = jax.device_get(metrics)
            terms = " ".join(
                f"{k}={float(v):.4g}"
                for k, v in m.items()
                if k not in ("finite", "lr", "sat") and not k.startswith("num_")
            )
            raise NonFiniteLossError(
                f"non-finite loss or gradient at step {step} ({terms}); the update was not "
                "applied. The last "
                f"good checkpoint is step {ckpt.latest_step()} in {ckpt.directory}. Lower "
                "config.optim.learning_rate, raise config.optim.burn_in or set "
                "config.optim.grad_clip_norm."
            )


def _summarise(pending) -> dict[str, float]:
    """Host means of the pending steps' metrics (each already checked by `_check_finite`)."""
    fetched = jax.device_get([m for _, m in pending])
    keys = [k for k in fetched[0] if k != "finite"]
    return {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in keys}


def _postfix(summary: Mapping[str, float], short: Mapping[str, str]) -> dict[str, str]:
    out = {v: f"{summary[f'train/{k}']:.4g}" for k, v in short.items() if f"train/{k}" in summary}
    out["img/s"] = f"{summary['train/images_per_sec']:.1f}"
    return out


def _format_eval(metrics: Mapping[str, float]) -> str:
    keys = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "top1", "top5", "loss")
    return " ".join(f"{k}={metrics[f'eval/{k}']:.4f}" for k in keys if f"eval/{k}" in metrics)
