"""The network: a Flax module that runs a tuple of layer specs in darknet's order."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from yolov4_jax.models import layers, specs


def add_residual(x: jax.Array, residual: jax.Array) -> jax.Array:
    """darknet's [shortcut] sum of `x` (the previous layer) and `residual` (a `from` layer).

    Layers of equal depth simply add. Otherwise the output keeps `x`'s channels and only the
    leading channels the two share get the residual: a partial residual connection, as in
    csresnext50.cfg's first block (blas.c::shortcut_multilayer_cpu adds only where the channel
    index exists in both).
    """
    c = min(x.shape[-1], residual.shape[-1])
    if c == x.shape[-1] == residual.shape[-1]:
        return x + residual
    return jnp.concatenate([x[..., :c] + residual[..., :c], x[..., c:]], axis=-1)


def layer_name(index: int) -> str:
    """Variable-collection key of layer `index` (zero-padded so keys sort in layer order)."""
    return f"layer{index:03d}"


class Network(nn.Module):
    """A darknet-style network over NHWC images.

    Attributes:
      layers: the layer specs, in order (see `yolov4_jax.models.specs`).
      bn_momentum: weight of the old running statistics (Flax convention; darknet's .01
        update rate is 0.99 here).
      dtype: compute dtype of convolutions (float32, or bfloat16 for mixed precision; BN
        statistics and outputs stay float32).
      conv_gradients: how convolution gradients are expressed ("auto", "xla", "canonical";
        see `conv.conv2d`). The values are the same; "auto" picks the fast form for the
        backend.
      conv_algorithm: how 3x3 stride-1 convolutions are computed ("auto", "auto_f4",
        "direct", "winograd"; see `conv.conv2d`). "auto" takes Winograd's where it is faster
        on the CPU; "auto_f4" its larger tiles on large maps too.
      net: darknet's [net] options (input size, channels, training keys), kept so that a
        model exports to a complete cfg.

    `__call__(images, train=False, use_running_average=None)`: `images` float `[N, H, W, C]`
    in [0, 1]. `train` switches DropBlock on; `use_running_average` (default `not train`)
    chooses BN's running statistics over batch statistics, so frozen BN and SAT's
    inference-mode pass are one argument each. Returns a tuple with one `[N, H/s, W/s,
    A*(5+C)]` float32 array per `Yolo` layer (the raw output of the conv that feeds it), or
    the last layer's output when the network has no `Yolo` layer (a classifier).
    """

    layers: tuple[specs.Spec, ...]
    bn_momentum: float = 0.99
    dtype: Any = jnp.float32
    conv_gradients: str = "auto"
    conv_algorithm: str = "auto"
    # darknet [net] options as (key, value) pairs; written back by `darknet.save`.
    net: tuple[tuple[str, str], ...] = ()

    @property
    def heads(self) -> tuple[specs.Yolo, ...]:
        return tuple(s for s in self.layers if isinstance(s, specs.Yolo))

    @nn.compact
    def __call__(
        self,
        images: jax.Array,
        train: bool = False,
        use_running_average: bool | None = None,
        dropblock_scale: jax.Array | float = 1.0,
    ):
        if use_running_average is None:
            use_running_average = not train
        x = images.astype(self.dtype)
        outputs: list[jax.Array] = []
        heads: list[jax.Array] = []
        for i, spec in enumerate(self.layers):
            name = layer_name(i)
            if isinstance(spec, specs.Conv):
                conv = layers.ConvBN(
                    spec,
                    self.bn_momentum,
                    self.dtype,
                    self.conv_gradients,
                    self.conv_algorithm,
                    name=name,
                )
                x = conv(x, use_running_average)
            elif isinstance(spec, specs.MaxPool):
                x = layers.max_pool(x, spec)
            elif isinstance(spec, specs.Upsample):
                x = layers.upsample(x, spec.stride)
            elif isinstance(spec, specs.Route):
                parts = []
                for j in spec.layers:
                    y = outputs[j]
                    chunk = y.shape[-1] // spec.groups
                    parts.append(y[..., spec.group_id * chunk : (spec.group_id + 1) * chunk])
                x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
            elif isinstance(spec, specs.Shortcut):
                inputs = [x] + [outputs[j] for j in spec.layers]
                if spec.weights_type == "none":
                    for residual in inputs[1:]:
                        x = add_residual(x, residual)
                else:
                    x = layers.WeightedFusion(
                        spec.weights_type, spec.weights_normalization, name=name
                    )(inputs)
                x = layers.activation(x, spec.activation)
            elif isinstance(spec, specs.Sam):
                x = x * outputs[spec.layer]
            elif isinstance(spec, specs.SpatialAttention):
                x = layers.SpatialAttention(
                    spec.size, self.dtype, self.conv_gradients, self.conv_algorithm, name=name
                )(x)
            elif isinstance(spec, specs.ChannelAttention):
                x = layers.ChannelAttention(spec.reduction, name=name)(x)
            elif isinstance(spec, specs.DropBlock):
                x = layers.DropBlock(spec.probability, spec.block_size, name=name)(
                    x, train, dropblock_scale
                )
            elif isinstance(spec, specs.AvgPool):
                x = jnp.mean(x, axis=(1, 2), keepdims=True)
            elif isinstance(spec, specs.Yolo):
                heads.append(x.astype(jnp.float32))
            else:
                raise TypeError(f"layer {i}: unsupported spec {spec!r}")
            outputs.append(x)
        if heads:
            return tuple(heads)
        return x.astype(jnp.float32)


def output_shapes(layer_specs, height: int, width: int, channels: int = 3):
    """Static [H, W, C] of every layer's output, for checks and error messages."""
    shapes: list[tuple[int, int, int]] = []
    h, w, c = height, width, channels
    for i, s in enumerate(layer_specs):
        if isinstance(s, specs.Conv):
            h = (h + 2 * s.padding - s.size) // s.stride + 1
            w = (w + 2 * s.padding - s.size) // s.stride + 1
            c = s.filters
        elif isinstance(s, specs.MaxPool):
            h = (h + s.padding - s.size) // s.stride + 1
            w = (w + s.padding - s.size) // s.stride + 1
        elif isinstance(s, specs.Upsample):
            h, w = h * s.stride, w * s.stride
        elif isinstance(s, specs.Route):
            hw = {shapes[j][:2] for j in s.layers}
            if len(hw) != 1:
                raise ValueError(f"layer {i} [route]: inputs {s.layers} differ in size {hw}")
            (h, w), c = hw.pop(), sum(shapes[j][2] // s.groups for j in s.layers)
        elif isinstance(s, specs.Shortcut | specs.Sam):
            refs = s.layers if isinstance(s, specs.Shortcut) else (s.layer,)
            # A plain shortcut may join layers of different depth (`add_residual`); a weighted
            # one and [sam] need equal shapes.
            depth_may_differ = isinstance(s, specs.Shortcut) and s.weights_type == "none"
            for j in refs:
                if shapes[j][:2] != (h, w) or not (depth_may_differ or shapes[j][2] == c):
                    raise ValueError(
                        f"layer {i} [{type(s).__name__.lower()}]: layer {j} has shape "
                        f"{shapes[j]}, the previous layer {(h, w, c)}"
                    )
        elif isinstance(s, specs.AvgPool):
            h = w = 1
        shapes.append((h, w, c))
    return shapes


def check_input_size(
    model: Network, size: tuple[int, int], error: type[Exception] = ValueError
) -> None:
    """Raises ``error`` where ``size`` (height, width) does not fit ``model``'s layers or its
    input is not RGB (detection and export take 3-channel images)."""
    channels = int(dict(model.net).get("channels", 3))
    if channels != 3:
        raise error(f"the network takes {channels}-channel input; images here are RGB (3)")
    try:
        output_shapes(model.layers, *size, channels)
    except ValueError as e:
        raise error(
            f"input size {size[1]}x{size[0]} does not fit the network "
            f"(YOLOv4's sizes are multiples of 32): {e}"
        ) from None
