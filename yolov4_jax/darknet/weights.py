"""Read and write darknet `.weights` files as Flax variables.

Layout (parser.c::load_weights): int32 major, minor, revision; `seen` images as uint64
when major * 10 + minor >= 2 (else int32); then for each [convolutional] layer in order:
biases[n], and if batch_normalize scales[n], rolling_mean[n], rolling_var[n]; then the
kernel as [out, in / groups, kh, kw]; for a weighted [shortcut], its weights. All float32.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from yolov4_jax import Error
from yolov4_jax.models import network, specs


class WeightsError(Error, ValueError):
    """A weights file that does not fit its cfg; the message names layer and counts."""


@dataclasses.dataclass(frozen=True)
class Header:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def wide_seen(self) -> bool:
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000


def _layer_arrays(layer_specs, channels: int):
    """Yields (layer index, [(path, shape, transform-to-flax)]) in file order."""
    shapes = network.output_shapes(layer_specs, 64, 64, channels)
    for i, s in enumerate(layer_specs):
        c_in = shapes[i - 1][2] if i else channels
        if isinstance(s, specs.Conv):
            entries = []
            if s.batch_normalize:
                entries += [
                    (("params", "bn", "bias"), (s.filters,)),
                    (("params", "bn", "scale"), (s.filters,)),
                    (("batch_stats", "bn", "mean"), (s.filters,)),
                    (("batch_stats", "bn", "var"), (s.filters,)),
                ]
            else:
                entries.append((("params", "bias"), (s.filters,)))
            entries.append((("params", "kernel"), (s.filters, c_in // s.groups, s.size, s.size)))
            yield i, s, entries
        elif isinstance(s, specs.Shortcut) and s.weights_type != "none":
            n = len(s.layers) + 1
            shape = (n,) if s.weights_type == "per_feature" else (n, c_in)
            yield i, s, [(("params", "weights"), shape)]
        elif isinstance(s, specs.SpatialAttention | specs.ChannelAttention):
            raise WeightsError(f"layer {i}: {type(s).__name__} has no darknet weights format")


def _to_flax(path, array: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel":
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    return array


def read_weights(
    path: str | os.PathLike,
    layer_specs,
    channels: int = 3,
    num_layers: int | None = None,
) -> tuple[dict[str, Any], Header]:
    """Reads `.weights` into {'params': ..., 'batch_stats': ...} numpy trees.

    With `num_layers`, only layers [0, num_layers) are read (darknet's partial files such
    as yolov4.conv.137) and the file must end there.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read weights ({e.strerror})") from None
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    header = Header(major, minor, revision, 0)
    if header.wide_seen:
        seen, offset = int(np.frombuffer(data, "<u8", 1, 12)[0]), 20
    else:
        seen, offset = int(np.frombuffer(data, "<i4", 1, 12)[0]), 16
    header = dataclasses.replace(header, seen=seen)
    if (len(data) - offset) % 4:
        raise WeightsError(
            f"{path}: {len(data) - offset} bytes after the header is not a "
            "whole number of float32 values"
        )
    values = np.frombuffer(data, "<f4", offset=offset)
    pos = 0
    tree: dict[str, dict] = {"params": {}, "batch_stats": {}}
    last = None
    for i, s, entries in _layer_arrays(layer_specs, channels):
        if num_layers is not None and i >= num_layers:
            break
        need = sum(int(np.prod(shape)) for _, shape in entries)
        if pos + need > values.size:
            raise WeightsError(
                f"{path}: truncated at layer {i} [{type(s).__name__}]: expected {need} values, "
                f"found {values.size - pos} (file has {values.size} values after the header; "
                "were the weights saved for another cfg?)"
            )
        for (collection, *keys), shape in entries:
            n = int(np.prod(shape))
            array = values[pos : pos + n].reshape(shape).astype(np.float32)
            pos += n
            node = tree[collection].setdefault(network.layer_name(i), {})
            for k in keys[:-1]:
                node = node.setdefault(k, {})
            node[keys[-1]] = _to_flax(keys, array)
        last = i
    if pos != values.size:
        raise WeightsError(
            f"{path}: {values.size - pos} float32 values left over after the last layer with "
            f"weights (layer {last}): the cfg expects {pos} values"
            + ("" if num_layers is None else f" in its first {num_layers} layers")
            + f", the file has {values.size}; were the weights saved for another cfg?"
        )
    return tree, header


def write_weights(
    path: str | os.PathLike, layer_specs, variables, header: Header, channels: int = 3
) -> None:
    """Writes Flax variables as darknet `.weights` (inverse of `read_weights`)."""
    chunks = [np.array([header.major, header.minor, header.revision], "<i4").tobytes()]
    chunks.append(np.array([header.seen], "<u8" if header.wide_seen else "<i4").tobytes())
    for i, _s, entries in _layer_arrays(layer_specs, channels):
        for (collection, *keys), shape in entries:
            node = variables[collection][network.layer_name(i)]
            for k in keys:
                node = node[k]
            array = np.asarray(node, np.float32)
            if keys[-1] == "kernel":
                array = array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
            if array.shape != tuple(shape):
                raise WeightsError(
                    f"layer {i}: {'/'.join(keys)} has shape {array.shape}, "
                    f"darknet expects {tuple(shape)}"
                )
            chunks.append(np.ascontiguousarray(array).astype("<f4").tobytes())
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
