"""The train step: one jitted function of (state, batch) -> (state, metrics) per input shape.

The global batch is split into ``optim.subdivisions`` micro-batches and scanned; each
micro-batch optionally gets Self-Adversarial Training, runs forward with BatchNorm
(synchronised over the ``data`` mesh axis) or CmBN (statistics accumulated over the
micro-batches of the update, the ``cmbn`` collection) or CBN (statistics of the last updates,
compensated, the ``cbn`` collection in the state), and adds its gradient; then the optax chain
updates the weights, and the EMA follows. A non-finite loss or gradient leaves the state
untouched and is reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yolov4_jax import ConfigError
from yolov4_jax.models import Network
from yolov4_jax.training import optim, tasks
from yolov4_jax.training.state import TrainState, cbn_newest, cbn_push, zero_cmbn

Array = jax.Array
PyTree = Any


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
        raise ConfigError(f"config.train.bn must be 'bn', 'cmbn' or 'cbn', got {tc.bn!r}")
    if tc.bn == "cbn" and tc.cbn_window < 1:
        raise ConfigError(f"config.train.cbn_window must be >= 1, got {tc.cbn_window}")
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


def make_mesh() -> Mesh:
    """A 1-D ``data`` mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """This process's rows -> global arrays sharded over ``data``."""
    sharding = NamedSharding(mesh, P("data"))
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
