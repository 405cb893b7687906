"""The train loop behind `python -m yolov4_jax.main`: one jitted step, checkpoints, metrics, eval.

The step (`make_train_step`) is one XLA computation per input shape: the global batch is split
into ``optim.subdivisions`` micro-batches and scanned; each micro-batch optionally gets
Self-Adversarial Training, runs forward with BatchNorm (synchronised over the ``data`` mesh axis)
or CmBN (statistics accumulated over the micro-batches of the update, the ``cmbn`` collection)
or CBN (statistics of the last iterations, compensated, the ``cbn`` collection in the state),
and adds its gradient; then the optax chain updates the weights, and the EMA follows. A
non-finite loss or gradient leaves the state untouched and is reported; the loop then stops.

`train_and_evaluate(config, workdir)` owns everything around it: the data mesh, the grain
iterator, orbax checkpoints (state and iterator position; the latest and the best are kept;
resume is automatic; SIGTERM saves and exits), metrics (WORKDIR/metrics.jsonl and TensorBoard
event files), a progress bar, periodic COCO evaluation and a picture of detections at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yolov4_jax import data as data_lib
from yolov4_jax import hostmem, losses, metric_writer, optim, tasks
from yolov4_jax.models import Network, factory

Array = jax.Array
PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator's position."""

    step: Array  # optimizer updates applied so far (int32)
    params: PyTree
    batch_stats: PyTree  # BN running statistics (darknet's rolling mean and variance)
    opt_state: PyTree
    ema_params: PyTree  # EMA of params ({} when config.optim.ema is off)
    cbn: PyTree  # Cross-Iteration BN history ({} unless config.train.bn == "cbn")
    rng: Array  # uint32 [2] raw key, folded with the step inside the train step


def init_variables(
    model: Network, config: ml_collections.ConfigDict, rng: Array, image_size: int
) -> dict[str, PyTree]:
    """Initial ``params`` and ``batch_stats``; darknet weights from ``config.model.weights``."""
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = jax.jit(model.init)(rng, dummy)
    variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
    if config.model.weights:
        from yolov4_jax.darknet import weights as dw

        num_layers = config.model.weights_num_layers
        tree, _ = dw.read_weights(
            config.model.weights, model.layers, 3, None if num_layers < 0 else num_layers
        )
        merged = jax.tree.map(np.asarray, variables)
        for collection, layers in tree.items():
            for name, leaves in layers.items():
                target = merged[collection].get(name)
                shapes = jax.tree.map(np.shape, leaves)
                if target is None or jax.tree.map(np.shape, target) != shapes:
                    raise ValueError(
                        f"{config.model.weights}: {collection}/{name} has shapes {shapes}, "
                        f"the model expects {jax.tree.map(np.shape, target)}"
                    )
                merged[collection][name] = leaves
        variables = jax.tree.map(jnp.asarray, merged)
    if config.model.get("backbone_checkpoint"):
        variables = _load_backbone(model, variables, config.model)
    return variables


def _load_backbone(model: Network, variables: PyTree, model_config) -> PyTree:
    """``variables`` with the backbone of a classifier run (``backbone_checkpoint``)."""
    from yolov4_jax import checkpoints
    from yolov4_jax.models import transfer

    path = model_config.backbone_checkpoint
    which = model_config.get("backbone_checkpoint_which", "best")
    _, classifier, loaded, _ = checkpoints.load_for_inference(path, which)
    merged, names = transfer.transfer_backbone(
        model.layers,
        variables,
        classifier.layers,
        loaded,
        source=f"config.model.backbone_checkpoint={path}",
    )
    logging.info("backbone: %d layers from %s (%s checkpoint)", len(names), path, which)
    return jax.tree.map(jnp.asarray, merged)


def create_train_state(
    model: Network,
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    rng: Array,
) -> TrainState:
    init_rng, state_rng = jax.random.split(rng)
    variables = init_variables(model, config, init_rng, 64)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if config.optim.ema else {},
        cbn=(
            zero_cbn(params, config.train.cbn_window - 1, config.train.cbn_compensate)
            if config.train.bn == "cbn"
            else {}
        ),
        rng=jax.random.key_data(state_rng) if _is_typed_key(state_rng) else state_rng,
    )


def _is_typed_key(key: Array) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def zero_cmbn(batch_stats: PyTree) -> PyTree:
    """The ``cmbn`` collection at the start of an update: zeros beside every BN layer."""
    if isinstance(batch_stats, Mapping) and set(batch_stats) == {"mean", "var"}:
        zeros = jnp.zeros_like(batch_stats["mean"])
        return {"mean": zeros, "mean_sq": zeros, "count": jnp.zeros((), jnp.float32)}
    return {k: zero_cmbn(v) for k, v in batch_stats.items()}


def zero_cbn(params: PyTree, history: int, compensate: bool) -> PyTree:
    """The empty ``cbn`` collection: ``history`` past iterations for every conv + BN layer."""
    if not isinstance(params, Mapping):
        return None
    if "kernel" in params and "bn" in params:
        kernel = params["kernel"]
        features = kernel.shape[-1]
        out = {
            "mean": jnp.zeros((history, features), jnp.float32),
            "mean_sq": jnp.zeros((history, features), jnp.float32),
            "count": jnp.zeros((), jnp.int32),
        }
        if compensate:
            for name in ("kernel", "grad_mean", "grad_sq"):
                out[name] = jnp.zeros((history, *kernel.shape), jnp.float32)
        return out
    children = {k: zero_cbn(v, history, compensate) for k, v in params.items()}
    return {k: v for k, v in children.items() if v}


def cbn_newest(cbn: PyTree) -> PyTree:
    """What each layer just pushed onto its ``cbn`` history (entry 0), without ``count``."""
    if "count" in cbn:
        return {k: v[0] for k, v in cbn.items() if k != "count"}
    return {k: cbn_newest(v) for k, v in cbn.items()}


def cbn_push(history: PyTree, iteration_sum: PyTree, subdivisions: int) -> PyTree:
    """The ``cbn`` history after an update: its micro-batches' average pushed as one iteration.

    CBN's window counts iterations (weight updates, Yao et al. 2021): within an update every
    micro-batch sees the same past iterations, and the update then adds one entry, the
    average over its micro-batches of the statistics, the kernel and the statistics'
    gradients (all taken at the update's one kernel).
    """
    if "count" in history:
        out = {"count": jnp.minimum(history["count"] + 1, history["mean"].shape[0])}
        for k, v in iteration_sum.items():
            newest = (v / subdivisions)[None].astype(history[k].dtype)
            out[k] = jnp.concatenate([newest, history[k][:-1]], axis=0)
        return out
    return {k: cbn_push(history[k], iteration_sum[k], subdivisions) for k in history}


def sat_images(
    model: Network,
    variables: PyTree,
    images: Array,
    heads,
    loss_options: losses.LossOptions,
    step_size: Array,
) -> Array:
    """Self-Adversarial Training's first stage (darknet train_network_datum_gpu).

    The network runs with BN in inference mode against an empty ground truth, so the loss only
    asks every prediction to report "no object"; the images move by ``step_size`` down that
    loss's gradient (darknet adds ``adversarial_lr * iter / max_batches`` times the input
    delta, which is the negative gradient), hiding the objects from the current detector, and
    are clipped to [0, 1]. The gradient is per image (the loss summed over the batch). darknet's
    yolo layer additionally pushes confident classes and boxes away in this stage; that part
    is not reproduced (docs: the loss's empty-truth form is used as it is).
    """
    b, m = images.shape[0], 1
    empty = {
        "boxes": jnp.zeros((b, m, 4), jnp.float32),
        "labels": jnp.zeros((b, m), jnp.int32),
        "mask": jnp.zeros((b, m), bool),
    }

    def suppress_loss(x):
        outputs = model.apply(variables, x, train=False)
        loss, _ = losses.yolo_loss(outputs, empty, heads, loss_options, image_hw=x.shape[1:3])
        return loss * b

    grad = jax.grad(suppress_loss)(images)
    return jnp.clip(images - step_size * grad, 0.0, 1.0)


def make_train_step(
    model: Network,
    config: ml_collections.ConfigDict,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh | None = None,
    *,
    max_traces: int | None = None,
) -> Callable[[TrainState, dict[str, Array]], tuple[TrainState, dict[str, Array]]]:
    """The jitted ``step(state, batch) -> (state, metrics)``.

    ``max_traces``: if given, tracing the step more often than that (once per input shape is
    expected) raises (``chex.assert_max_traces``).

    ``batch`` holds ``image`` uint8 [B, H, W, 3] and ``boxes``/``labels``/``mask`` (the data
    pipeline's contract); with a mesh, B is sharded over its ``data`` axis. Metrics are device
    scalars: the loss terms averaged over the micro-batches, counts summed, ``lr``,
    ``grad_norm``, ``sat`` (fraction of micro-batches that got SAT) and ``finite``.
    """
    task = tasks.create(config, model)
    subdivisions = int(config.optim.subdivisions)
    total_steps = int(config.optim.max_batches)
    tc = config.train
    if tc.bn not in ("bn", "cmbn", "cbn"):
        raise ValueError(f"config.train.bn must be 'bn', 'cmbn' or 'cbn', got {tc.bn!r}")
    if tc.bn == "cbn" and tc.cbn_window < 1:
        raise ValueError(f"config.train.cbn_window must be >= 1, got {tc.cbn_window}")
    use_cmbn = tc.bn == "cmbn" and subdivisions > 1
    use_cbn = tc.bn == "cbn"
    cbn_history = use_cbn and tc.cbn_window > 1
    mutable = ["batch_stats"] + (["cmbn"] if use_cmbn else []) + (["cbn"] if use_cbn else [])
    ema_on = bool(config.optim.ema)
    micro_spec = P(None, "data") if mesh is not None else None

    def constrain(x, spec):
        if mesh is None or spec is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def split(x):
        # Row i*S + s goes to micro-batch s, so every micro-batch keeps the batch's sharding
        # over devices (each device holds B / (D * S) rows of each micro-batch).
        b = x.shape[0]
        y = x.reshape(b // subdivisions, subdivisions, *x.shape[1:]).swapaxes(0, 1)
        return constrain(y, micro_spec)

    def step_fn(state: TrainState, batch: dict[str, Array]):
        b = batch["image"].shape[0]
        if b % subdivisions:
            raise ValueError(f"batch {b} is not divisible by subdivisions {subdivisions}")
        missing = set(task.batch_keys) - set(batch)
        if missing:
            raise KeyError(f"the {config.task} batch lacks {sorted(missing)}")
        micro = {k: split(batch[k]) for k in task.batch_keys}
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        keys = jax.random.split(rng, subdivisions)
        progress = state.step.astype(jnp.float32) / max(total_steps, 1)
        dropblock_scale = jnp.minimum(1.0, progress / max(tc.dropblock_ramp, 1e-9))
        sat_on = jnp.logical_and(tc.sat, state.step >= config.optim.burn_in)
        sat_step = tc.sat_lr * progress

        def micro_step(carry, xs):
            grads_acc, batch_stats, cmbn, cbn_sum = carry
            mb, key = xs
            sat_key, drop_key = jax.random.split(key)
            images = mb["image"].astype(jnp.float32) / 255.0
            do_sat = jnp.logical_and(sat_on, jax.random.bernoulli(sat_key, tc.sat_prob))
            if tc.sat:
                frozen = {"params": state.params, "batch_stats": batch_stats}
                images = jax.lax.cond(
                    do_sat,
                    lambda x: task.adversarial_images(frozen, x, sat_step),
                    lambda x: x,
                    images,
                )

            def loss_fn(params):
                variables = {"params": params, "batch_stats": batch_stats}
                if use_cmbn:
                    variables["cmbn"] = cmbn
                if use_cbn:
                    variables["cbn"] = state.cbn  # past iterations only, for every micro-batch
                outputs, new_vars = model.apply(
                    variables,
                    images,
                    train=True,
                    dropblock_scale=dropblock_scale,
                    rngs={"dropblock": drop_key},
                    mutable=mutable,
                )
                loss, metrics = task.loss(outputs, mb, images.shape[1:3])
                return loss, (metrics, new_vars)

            (_, (metrics, new_vars)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state.params
            )
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            metrics = dict(metrics, sat=do_sat.astype(jnp.float32))
            new_cmbn = new_vars["cmbn"] if use_cmbn else cmbn
            if cbn_history:
                cbn_sum = jax.tree.map(jnp.add, cbn_sum, cbn_newest(new_vars["cbn"]))
            return (grads_acc, new_vars["batch_stats"], new_cmbn, cbn_sum), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        cmbn0 = zero_cmbn(state.batch_stats) if use_cmbn else {}
        cbn0 = jax.tree.map(jnp.zeros_like, cbn_newest(state.cbn)) if cbn_history else {}
        carry = (zeros, state.batch_stats, cmbn0, cbn0)
        if subdivisions == 1 or tc.unroll_subdivisions:
            # Unrolled: more memory and a longer compile than the scan, no faster once the
            # scan's gradient convolutions are canonical (model.conv_gradients).
            per_micro = []
            for i in range(subdivisions):
                carry, m = micro_step(carry, jax.tree.map(lambda x, i=i: x[i], (micro, keys)))
                per_micro.append(m)
            metrics = jax.tree.map(lambda *v: jnp.stack(v), *per_micro)
        else:
            carry, metrics = jax.lax.scan(micro_step, carry, (micro, keys))
        grads, batch_stats, _, cbn_sum = carry
        cbn = cbn_push(state.cbn, cbn_sum, subdivisions) if cbn_history else state.cbn
        grads = jax.tree.map(lambda g: g / subdivisions, grads)
        metrics = {
            k: (jnp.sum(v) if k.startswith("num_") else jnp.mean(v)) for k, v in metrics.items()
        }
        grad_norm = optax.tree.norm(grads)
        finite = jnp.logical_and(jnp.isfinite(metrics["total"]), jnp.isfinite(grad_norm))

        def update(state, grads, batch_stats, cbn):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            new_state = state.replace(
                step=state.step + 1,
                params=params,
                batch_stats=batch_stats,
                opt_state=opt_state,
                cbn=cbn,
            )
            if ema_on:
                o = config.optim
                new_state = new_state.replace(
                    ema_params=optim.ema_update(
                        state.ema_params,
                        params,
                        o.ema_decay,
                        state.step + 1,
                        warmup_steps=o.ema_warmup_steps,
                        start_step=o.ema_start_step,
                    )
                )
            return new_state

        # A non-finite loss or gradient must not poison the weights: keep the old state.
        # (A cond, not a select between new and old: XLA keeps no copy of the old state then.)
        new_state = jax.lax.cond(
            finite, update, lambda state, *_: state, state, grads, batch_stats, cbn
        )
        metrics.update(lr=schedule(state.step), grad_norm=grad_norm, finite=finite)
        return new_state, metrics

    if max_traces is not None:
        import chex  # optax's dependency

        step_fn = chex.assert_max_traces(step_fn, n=max_traces)
    if mesh is None:
        return jax.jit(step_fn, donate_argnums=0)
    replicated = NamedSharding(mesh, P())
    return jax.jit(
        step_fn,
        in_shardings=(replicated, NamedSharding(mesh, P("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


# ----------------------------------------------------------------------------------------------
# The loop.


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


def make_mesh() -> Mesh:
    """A 1-D ``data`` mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """This process's rows -> global arrays sharded over ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }


def _check_batch(config: ml_collections.ConfigDict, num_devices: int) -> None:
    b, s = config.data.batch_size, config.optim.subdivisions
    if s < 1 or b % (s * num_devices) and not config.data.dynamic_minibatch:
        raise ValueError(
            f"config.data.batch_size={b} must be divisible by config.optim.subdivisions={s} "
            f"times the {num_devices} devices"
        )


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, *, stop_at_step: int | None = None
) -> dict[str, float]:
    """Trains ``config`` in ``workdir`` (resuming from its checkpoints) and evaluates.

    ``stop_at_step`` ends this run early at that step with a checkpoint, as a preemption
    would (for time-boxed jobs; the schedule still follows ``optim.max_batches``).
    Returns the last evaluation's metrics (``eval/...`` keys; empty if none ran).
    """
    from yolov4_jax import checkpoints

    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = make_mesh()
    num_devices = mesh.devices.size
    _check_batch(config, num_devices)

    info = data_lib.dataset_info(config)
    tasks.check_dataset(config, info)
    model = factory.create_model(config.model, num_classes=info.num_classes)
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
    hostmem.release()  # what init freed (see yolov4_jax.hostmem)
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


def eval_variables(state: TrainState) -> dict[str, PyTree]:
    """The weights evaluation uses: the EMA when it is on, else the trained ones."""
    params = state.ema_params if state.ema_params else state.params
    return {"params": params, "batch_stats": state.batch_stats}
