"""The one way the programs load a model: darknet files, a config, or a training workdir.

`load_model` returns a `LoadedModel` whatever the source, so `detect`, `evaluate`, notebooks and
experiments read a model the same way and report the same errors (`ModelSourceError`, one line
naming the source and what to pass instead).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from yolov4_jax import Error, darknet
from yolov4_jax.darknet import weights as darknet_weights
from yolov4_jax.models import Network, factory
from yolov4_jax.training import checkpoints


class ModelSourceError(Error, ValueError):
    """Conflicting, missing or unreadable model sources; the message says what to pass."""


@dataclasses.dataclass
class LoadedModel:
    model: Network
    variables: Any
    class_names: list[str] | None  # a training run's classes; None for darknet files
    size: tuple[int, int] | None  # (height, width): the cfg's [net], or the run's eval canvas
    config: ml_collections.ConfigDict | None  # a training run's config


def default_size(model: Network) -> tuple[int, int] | None:
    """(height, width) of the model's [net] section, or None when it has none."""
    net = dict(model.net)
    if "width" in net and "height" in net:
        return int(net["height"]), int(net["width"])
    return None


def load_model(
    *,
    cfg: str | None = None,
    weights: str | None = None,
    workdir: str | None = None,
    checkpoint: str = "best",
    config: ml_collections.ConfigDict | None = None,
    num_classes: int | None = None,
    allow_random: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """The model and variables of one source:

    * ``workdir``: a training run (its ``config.json``, ``dataset.json`` and the ``checkpoint``,
      "best" or "latest"; `checkpoints.load_for_inference`);
    * ``cfg`` and ``weights``: darknet files;
    * ``config``: ``config.model`` built by the factory (a darknet cfg when its name is "cfg")
      with ``weights`` or ``config.model.weights``, checked layer by layer against the model.

    Without weights, ``allow_random`` gives randomly initialised variables with a warning
    (a smoke test of the pipeline); otherwise it is an error.
    """
    if workdir:
        if cfg or weights:
            raise ModelSourceError("pass either --workdir or --cfg/--weights, not both")
        try:
            run_config, model, variables, names = checkpoints.load_for_inference(
                workdir, checkpoint
            )
        except FileNotFoundError as e:
            raise ModelSourceError(str(e)) from None
        side = run_config.data.eval_image_size or run_config.data.image_size
        return LoadedModel(model, variables, list(names), (side, side), run_config)
    weights = weights or (config.model.weights if config is not None else "") or None
    if cfg or (config is not None and config.model.name == "cfg"):
        cfg = cfg or config.model.cfg_path
        if weights is None:
            model = darknet.model_from_cfg(cfg)
            return LoadedModel(
                model, _random(model, allow_random, cfg, seed), None, default_size(model), None
            )
        model, variables = darknet.load(cfg, weights)
        return LoadedModel(model, variables, None, default_size(model), None)
    if config is None:
        raise ModelSourceError("pass --cfg and --weights (darknet files), --workdir, or --config")
    model = factory.create_model(config.model, num_classes)
    if weights is None:
        return LoadedModel(
            model, _random(model, allow_random, config.model.name, seed), None, None, None
        )
    template = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    variables, _ = darknet_weights.read_weights(weights, model.layers, 3, None)
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree.leaves_with_path(template)}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree.leaves_with_path(variables)}
    if want != got:
        wrong = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
        raise darknet.WeightsError(
            f"{weights} does not fit config.model ({config.model.name}): {wrong[0]} is "
            f"{got.get(wrong[0])} in the file, {want.get(wrong[0])} in the model"
        )
    return LoadedModel(model, jax.tree.map(jnp.asarray, variables), None, None, None)


def _random(model: Network, allowed: bool, source: str, seed: int) -> Any:
    if not allowed:
        raise ModelSourceError(f"{source}: no weights given (pass --weights or --workdir)")
    logging.warning("no weights given: using randomly initialised variables")
    return jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3), jnp.float32))
