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
import signal
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

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


def _check_batch(config: ml_collections.ConfigDict, num_devices: int) -> None:
    b, s = config.data.batch_size, config.optim.subdivisions
    if not b >= 1:
        raise ValueError(f"config.data.batch_size={b}: expected a positive number of images")
    if s < 1 or b % (s * num_devices) and not config.data.dynamic_minibatch:
        raise ValueError(
            f"config.data.batch_size={b} must be divisible by config.optim.subdivisions={s} "
            f"times the {num_devices} devices"
        )


def check_config(config: ml_collections.ConfigDict, model) -> None:
    """The values a run would otherwise trip over late (or silently): checked before anything
    is written or compiled. Raises ValueError naming the field and what it expects."""
    o, d = config.optim, config.data
    if not (math.isfinite(o.learning_rate) and o.learning_rate > 0):
        raise ValueError(
            f"config.optim.learning_rate={o.learning_rate}: expected a positive number"
        )
    if not int(o.max_batches) >= 1:
        raise ValueError(f"config.optim.max_batches={o.max_batches}: expected at least 1 update")
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
            raise ValueError(
                f"{field}={size}: expected a positive multiple of the network's largest "
                f"stride, {stride}"
            )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates.

    ``stop_at_step`` ends this run early at that step with a checkpoint, as a preemption
    would (for time-boxed jobs; the schedule still follows ``optim.max_batches``).
    Returns the last evaluation's metrics (``eval/...`` keys; empty if none ran).
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    num_devices = mesh.devices.size
    _check_batch(config, num_devices)

    info = data_lib.dataset_info(config)
    tasks.check_dataset(config, info)
    model = factory.create_model(config.model, num_classes=info.num_classes)
    check_config(config, model)
    os.makedirs(workdir, exist_ok=True)  # only once the run's values are known to be usable
    # data.jitter / data.resize left at None follow the last [yolo] head, as in darknet.
    config = data_lib.with_head_augmentation(config, model.heads)
    task = tasks.create(config, model)
    total_steps = int(config.optim.max_batches)
    tx, schedule = optim.make_optimizer(
        config.optim, global_batch_size=config.data.batch_size, total_steps=total_steps
    )
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True))
        with open(os.path.join(workdir, "dataset.json"), "w") as f:
            json.dump(
                {"name": info.name, "task": config.task, "class_names": list(info.class_names)},
                f,
                indent=1,
            )

    replicated = NamedSharding(mesh, P())
    state = jax.device_put(
        create_train_state(model, config, tx, jax.random.PRNGKey(config.seed)), replicated
    )
    hostmem.release()  # what init freed (see yolov4_jax.ops.hostmem)
    local_devices = jax.local_device_count()
    train_iter = task.train_iterator(
        config,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        seed=config.seed,
        batch_multiple=local_devices * config.optim.subdivisions,
    )
    ckpt = checkpoints.Checkpointer(workdir, best_metric=config.train.best_metric)
    state = ckpt.restore_latest(state, train_iter)
    start_step = int(jax.device_get(state.step))
    if start_step:
        logging.info("resumed from %s at step %d", ckpt.directory, start_step)

    train_step = make_train_step(model, config, tx, schedule, mesh)
    writer = metric_writer.MetricWriter(workdir, enabled=is_main, start_step=start_step)

    def evaluator(state):
        return task.evaluate(eval_variables(state), config, info, mesh)

    tc = config.train
    eval_metrics: dict[str, float] = {}
    pending: list[tuple[int, dict[str, Array]]] = []
    step = start_step
    last_time, last_step = time.time(), step
    images_seen = 0
    progress = _progress_bar(is_main, start_step, total_steps)
    try:
        with _Preemption() as preemption:
            while step < total_steps:
                local = next(train_iter)
                images_seen += local["image"].shape[0] * jax.process_count()
                with hostmem.collector_paused():  # the first call (and a new shape) traces
                    state, metrics = train_step(state, global_batch(local, mesh))
                step += 1
                if step == start_step + 1:
                    hostmem.release()  # what the compiler freed
                pending.append((step, metrics))
                at_end = step == total_steps
                do_eval = at_end or (tc.eval_every and step % tc.eval_every == 0)
                log_now = step % tc.log_every == 0 or at_end or preemption.requested
                stopping = stop_at_step is not None and step >= stop_at_step
                saving = do_eval or step % tc.checkpoint_every == 0 or preemption.requested
                # Every update is checked: this one when the step waits for the device anyway
                # (logging, saving), so nothing is saved after a skipped update; otherwise the
                # previous one, finished by now, so the check does not stall the device.
                _check_finite(
                    pending[-1:] if log_now or saving or stopping else pending[-2:-1], ckpt
                )
                if log_now:
                    now = time.time()
                    summary = _summarise(pending)
                    summary["train/images_per_sec"] = images_seen / max(now - last_time, 1e-9)
                    summary["train/steps_per_sec"] = (step - last_step) / max(now - last_time, 1e-9)
                    writer.write(step, summary)
                    progress.update(step - last_step)
                    progress.set_postfix(_postfix(summary, task.progress_keys), refresh=False)
                    pending, last_time, last_step, images_seen = [], now, step, 0
                if do_eval:
                    eval_metrics = evaluator(state)
                    writer.write(step, eval_metrics)
                    ckpt.save(step, state, train_iter, eval_metrics, force=True)
                    if is_main:
                        logging.info("step %d: %s", step, _format_eval(eval_metrics))
                elif step % tc.checkpoint_every == 0 or preemption.requested:
                    ckpt.save(step, state, train_iter)
                if preemption.requested:
                    logging.warning("SIGTERM: saved step %d in %s, exiting", step, workdir)
                    break
                if stopping and not at_end:
                    ckpt.save(step, state, train_iter)
                    break
    finally:
        progress.close()
        ckpt.close()
        writer.close()
    if step >= total_steps and is_main:
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
            raise FloatingPointError(
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
