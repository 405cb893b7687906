"""darknet interop: `.cfg` and `.weights` in, Flax model and variables out, and back.

model, variables = yolov4_jax.darknet.load("yolov4.cfg", "yolov4.weights")
heads = model.apply(variables, images, train=False)   # images [N, H, W, 3], RGB in [0, 1]
yolov4_jax.darknet.save(model, variables, "out.weights", cfg_path="out.cfg")
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax.darknet.cfg import CfgError, format_cfg, parse_cfg
from yolov4_jax.darknet.weights import Header, WeightsError, read_weights, write_weights
from yolov4_jax.models.network import Network

__all__ = [
    "CfgError",
    "WeightsError",
    "Header",
    "load",
    "save",
    "parse_cfg",
    "format_cfg",
    "model_from_cfg",
]


def model_from_cfg(cfg_path: str | os.PathLike, **network_kwargs) -> Network:
    """The Network described by a darknet cfg (no weights)."""
    net, layer_specs = parse_cfg(cfg_path)
    return Network(layer_specs, net=tuple(net.items()), **network_kwargs)


def _channels(model: Network) -> int:
    return int(dict(model.net).get("channels", 3))


def _check_tree(loaded, template, source: str) -> None:
    want = {
        jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(template)
    }
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(loaded)}
    for key in sorted(set(want) | set(got)):
        if want.get(key) != got.get(key):
            raise WeightsError(
                f"{source}: variable {key} is {got.get(key)} in the file's "
                f"layout but {want.get(key)} in the model"
            )


def load(
    cfg_path: str | os.PathLike,
    weights_path: str | os.PathLike | None = None,
    *,
    num_layers: int | None = None,
    rng: jax.Array | None = None,
    **network_kwargs,
):
    """Builds the cfg's network and loads darknet weights into it.

    Args:
      cfg_path: darknet `.cfg`.
      weights_path: darknet `.weights`; None gives freshly initialised variables.
      num_layers: read only the first `num_layers` layers (darknet's partial files such as
        `yolov4.conv.137`); the other layers keep their initialisation from `rng`.
      rng: initialisation key for layers the file does not cover (default PRNGKey(0)).
      **network_kwargs: passed to `Network` (for example `dtype=jnp.bfloat16`).

    Returns:
      (model, variables) with variables {"params", "batch_stats"}.
    """
    model = model_from_cfg(cfg_path, **network_kwargs)
    c = _channels(model)
    dummy = jnp.zeros((1, 64, 64, c), jnp.float32)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if weights_path is None or num_layers is not None:
        variables = jax.jit(model.init)(rng, dummy)
        if weights_path is None:
            return model, variables
    else:
        variables = jax.eval_shape(model.init, rng, dummy)
    tree, header = read_weights(weights_path, model.layers, c, num_layers)
    model = model.clone(net=tuple(dict(model.net, **_header_options(header)).items()))
    if num_layers is None:
        _check_tree(tree, variables, os.fspath(weights_path))
        return model, jax.tree.map(jnp.asarray, tree)
    merged = jax.tree.map(np.asarray, variables)
    for collection, layers in tree.items():
        for name, leaves in layers.items():
            _check_tree(leaves, merged[collection][name], f"{weights_path} {name}")
            merged[collection][name] = leaves
    return model, jax.tree.map(jnp.asarray, merged)


# The weights header travels with the model in its [net] options under these keys, so that
# save(load(...)) reproduces the file byte for byte.
_HEADER_KEYS = ("weights_major", "weights_minor", "weights_revision", "weights_seen")


def _header_options(header: Header) -> dict[str, str]:
    values = (header.major, header.minor, header.revision, header.seen)
    return {k: str(v) for k, v in zip(_HEADER_KEYS, values, strict=True)}


def save(
    model: Network,
    variables,
    weights_path: str | os.PathLike,
    *,
    cfg_path: str | os.PathLike | None = None,
    header: Header | None = None,
) -> None:
    """Writes variables as darknet `.weights` (and the network as a `.cfg` if asked).

    The header defaults to the one the model was loaded with, else darknet's current
    (major 0, minor 2, revision 5, seen 0).
    """
    net = dict(model.net)
    if header is None:
        if all(k in net for k in _HEADER_KEYS):
            header = Header(*(int(net[k]) for k in _HEADER_KEYS))
        else:
            header = Header()
    variables = jax.device_get(variables)
    write_weights(weights_path, model.layers, variables, header, _channels(model))
    if cfg_path is not None:
        options = {k: v for k, v in net.items() if k not in _HEADER_KEYS}
        options.setdefault("channels", "3")
        with open(cfg_path, "w", encoding="utf-8") as f:
            f.write(format_cfg(options, model.layers))
