"""Optimizer, learning-rate schedules and EMA: darknet's SGD recipe as one optax chain.

Darknet (yolov4.cfg, network.c::get_current_rate, convolutional_kernels.cu::
update_convolutional_layer_gpu) trains with SGD, momentum .949 and an L2 weight decay of
5e-4 added to the gradient of convolution weights only (not biases, BN scales or fusion
weights), before the momentum. Its update is ``v = m*v + (g + wd*w); w -= lr_t * v`` with
``g`` the gradient averaged over the batch, which is what
``add_decayed_weights -> trace -> scale_by_learning_rate`` computes.

Gradient accumulation over ``subdivisions`` micro-batches (darknet's batch/subdivisions) is
not in this chain: the train step scans over the micro-batches (which CmBN needs anyway),
averages their gradients and applies this optimizer once per update.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from yolov4_jax import ConfigError

Array = jax.Array
SCHEDULES = ("steps", "cosine", "sgdr", "poly", "constant")
_MAX_SGDR_CYCLES = 64


def scaled_learning_rate(optim_config: Mapping[str, Any], global_batch_size: int) -> float:
    """``learning_rate`` scaled linearly from ``reference_batch_size`` to the global batch.

    Darknet multiplies the cfg's rate by the number of GPUs, each of which trains on a full
    cfg batch (train_detector), which is the same linear rule.
    """
    return optim_config["learning_rate"] * global_batch_size / optim_config["reference_batch_size"]


def learning_rate_schedule(
    optim_config: Mapping[str, Any], *, global_batch_size: int, total_steps: int
) -> optax.Schedule:
    """darknet's get_current_rate as a jit-safe function of the update count.

    ``step`` counts the updates already applied (optax's convention, darknet's
    get_current_batch), so the very first update has rate 0, as in darknet. The rate is
    ``lr * (step / burn_in) ** power`` while ``step < burn_in``, then the policy:

    * ``steps``: ``lr`` times the product of ``scales[i]`` over ``steps[i] <= step``.
    * ``sgdr``: cosine annealing from ``lr`` to ``learning_rate_min`` over cycles of
      ``sgdr_cycle`` steps (0: ``total_steps``), each ``sgdr_mult`` times longer than the last.
      As in darknet, cycles count from step 0 (burn-in overrides the start of the first), a
      cycle ends on ``learning_rate_min`` and the next starts one step later.
    * ``cosine``: ``sgdr`` with a single cycle of ``total_steps``.
    * ``poly``: ``lr * (1 - step / total_steps) ** power`` (the classifier's policy in
      csdarknet53-omega.cfg); darknet's one ``power`` key serves burn-in and poly, so
      ``burn_in_power`` is the exponent of both.
    * ``constant``: ``lr``.

    ``learning_rate_min`` is not scaled with the batch (darknet does not scale it either).
    """
    policy = optim_config["schedule"]
    if policy not in SCHEDULES:
        raise ConfigError(f"schedule {policy!r} is not one of {SCHEDULES}")
    lr = scaled_learning_rate(optim_config, global_batch_size)
    burn_in = int(optim_config["burn_in"])
    power = float(optim_config["burn_in_power"])

    if policy == "steps":
        boundaries = np.asarray(optim_config["steps"], np.int64)
        scales = np.asarray(optim_config["scales"], np.float32)
        if boundaries.shape != scales.shape:
            raise ConfigError(f"steps {boundaries} and scales {scales} differ in length")

        def after_burn_in(step: Array) -> Array:
            passed = step[..., None] >= boundaries  # darknet: "if (steps[i] > batch) return"
            return lr * jnp.prod(jnp.where(passed, scales, 1.0), axis=-1)

    elif policy in ("cosine", "sgdr"):
        first = int(optim_config["sgdr_cycle"]) if policy == "sgdr" else 0
        mult = float(optim_config["sgdr_mult"]) if policy == "sgdr" else 1.0
        starts, sizes = _sgdr_cycles(first or total_steps, mult, total_steps)
        lr_min = float(optim_config["learning_rate_min"])

        def after_burn_in(step: Array) -> Array:
            # network.c: "while (start + cycle < batch) { start += cycle; cycle *= mult; }"
            ends = jnp.asarray(starts + sizes)
            k = jnp.minimum(jnp.sum(step[..., None] > ends, axis=-1), len(sizes) - 1)
            size = jnp.asarray(sizes)[k]
            t = jnp.minimum(step - jnp.asarray(starts)[k], size).astype(jnp.float32)
            return lr_min + 0.5 * (lr - lr_min) * (1.0 + jnp.cos(math.pi * t / size))

    elif policy == "poly":

        def after_burn_in(step: Array) -> Array:
            left = jnp.clip(1.0 - step.astype(jnp.float32) / max(total_steps, 1), 0.0, 1.0)
            return lr * jnp.power(left, power)

    else:

        def after_burn_in(step: Array) -> Array:
            return jnp.full(step.shape, lr, jnp.float32)

    def schedule(step) -> Array:
        step = jnp.asarray(step)
        ramp = lr * jnp.power(step.astype(jnp.float32) / max(burn_in, 1), power)
        return jnp.where(step < burn_in, ramp, after_burn_in(step)).astype(jnp.float32)

    return schedule


def _sgdr_cycles(first: int, mult: float, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of each SGDR cycle, enough to cover ``total_steps``."""
    if first < 1 or mult < 1.0:
        raise ConfigError(f"need sgdr_cycle >= 1 and sgdr_mult >= 1, got {first}, {mult}")
    starts, sizes = [0], [first]
    while starts[-1] + sizes[-1] < total_steps and len(sizes) < _MAX_SGDR_CYCLES:
        starts.append(starts[-1] + sizes[-1])
        sizes.append(max(int(sizes[-1] * mult), 1))  # darknet: int cycle_size *= mult
    return np.asarray(starts, np.int64), np.asarray(sizes, np.int64)


def weight_decay_mask(params: Any) -> Any:
    """True for convolution kernels (leaves named ``kernel``), False for everything else.

    Darknet decays conv weights only; biases, BN scales and biases and the weighted-fusion
    (MiWRC) weights are not decayed.
    """

    def is_kernel(path, _) -> bool:
        last = path[-1] if path else None
        name = getattr(last, "key", getattr(last, "name", None))
        return name == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
    optim_config: Mapping[str, Any], *, global_batch_size: int, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """darknet's SGD as an optax chain, and its learning-rate schedule.

    The chain: optional global-norm clipping (``grad_clip_norm`` > 0; darknet has none, its
    only clipping is the loss's per-delta ``max_delta``), L2 decay of the conv kernels,
    momentum (heavy ball, darknet's form; ``nesterov`` as an option) or, with
    ``optimizer="adam"``, Adam's scaling, then the schedule.
    """
    schedule = learning_rate_schedule(
        optim_config, global_batch_size=global_batch_size, total_steps=total_steps
    )
    parts = []
    if optim_config["grad_clip_norm"] > 0:
        parts.append(optax.clip_by_global_norm(optim_config["grad_clip_norm"]))
    if optim_config["weight_decay"] > 0:
        parts.append(optax.add_decayed_weights(optim_config["weight_decay"], weight_decay_mask))
    name = optim_config.get("optimizer", "sgd")
    if name == "sgd":
        parts.append(optax.trace(decay=optim_config["momentum"], nesterov=optim_config["nesterov"]))
    elif name == "adam":
        # Adam with `momentum` as beta1 (yolov5's --optimizer Adam); decay stays L2 as above.
        parts.append(optax.scale_by_adam(b1=optim_config["momentum"], b2=0.999))
    else:
        raise ConfigError(f"config.optim.optimizer must be 'sgd' or 'adam', got {name!r}")
    parts.append(optax.scale_by_learning_rate(schedule))
    return optax.chain(*parts), schedule


def ema_decay(
    step: Array | int, decay: float, *, warmup_steps: float = 2000.0, start_step: int = 0
) -> Array:
    """The EMA decay used at update ``step``.

    yolov5's warm decay ``decay * (1 - exp(-(step - start_step) / warmup_steps))`` (ModelEMA:
    early weights are forgotten quickly), or a constant ``decay`` when ``warmup_steps`` is 0.
    Before ``start_step`` the decay is 0, so the EMA follows the weights; darknet's ema_alpha
    is ``start_step = max_batches // 2, warmup_steps = 0``.
    """
    t = jnp.asarray(step, jnp.float32) - start_step
    d = decay * (1.0 - jnp.exp(-t / warmup_steps)) if warmup_steps > 0 else jnp.full_like(t, decay)
    return jnp.where(t < 0, 0.0, d)


def ema_update(
    ema: Any,
    params: Any,
    decay: float,
    step: Array | int,
    *,
    warmup_steps: float = 2000.0,
    start_step: int = 0,
) -> Any:
    """``ema * d + params * (1 - d)`` leaf by leaf, with ``d = ema_decay(step, ...)``.

    ``step`` is the number of updates applied so far, including the one that produced
    ``params`` (yolov5 increments before computing the decay). Non-float leaves are copied.
    """
    d = ema_decay(step, decay, warmup_steps=warmup_steps, start_step=start_step)

    def average(e, p):
        if not jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating):
            return p
        return (d * e + (1.0 - d) * p).astype(jnp.asarray(p).dtype)

    return jax.tree.map(average, ema, params)
