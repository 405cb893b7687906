"""The train state and its variable collections: params, BN, CmBN and CBN statistics, EMA.

`create_train_state` initialises a run (from darknet weights or a pretrained classifier's
backbone where the config asks); `zero_cmbn`, `zero_cbn` and `cbn_push` build and advance the
cross-iteration BatchNorm collections the step carries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from yolov4_jax.darknet import weights as dw
from yolov4_jax.models import Network, transfer
from yolov4_jax.training import checkpoints

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


def eval_variables(state: TrainState) -> dict[str, PyTree]:
    """The weights evaluation uses: the EMA when it is on, else the trained ones."""
    params = state.ema_params if state.ema_params else state.params
    return {"params": params, "batch_stats": state.batch_stats}
