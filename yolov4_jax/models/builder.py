"""A small helper that appends layer specs and hands back their indices."""

from __future__ import annotations

import math

from yolov4_jax.models import specs
from yolov4_jax.models.network import output_shapes


def scale_width(filters: int, width: float, divisor: int = 8) -> int:
    """Filters times the width multiplier, rounded to a multiple of `divisor` (at least one)."""
    if width == 1.0:
        return filters
    return max(divisor, int(round(filters * width / divisor)) * divisor)


def scale_depth(blocks: int, depth: float) -> int:
    """Residual blocks times the depth multiplier, at least one."""
    return max(1, int(round(blocks * depth)))


class Builder:
    """Collects layer specs; each method returns the index of the layer it added."""

    def __init__(self, width: float = 1.0):
        self.layers: list[specs.Spec] = []
        self.width = width

    @property
    def last(self) -> int:
        return len(self.layers) - 1

    def channels(self, index: int) -> int:
        """Output channels of layer `index`."""
        return output_shapes(self.layers[: index + 1], 64, 64)[index][2]

    def add(self, spec: specs.Spec) -> int:
        self.layers.append(spec)
        return self.last

    def conv(
        self,
        filters: int,
        size: int,
        activation: str,
        stride: int = 1,
        scale: bool = True,
        groups: int = 1,
    ) -> int:
        """Conv + BN + activation with darknet's pad=1 (size // 2 on every side).

        `groups` is the count at width 1. Scaled filters get gcd(groups, filters) groups: the
        same count wherever it divides them, else the largest divisor of both (for 32 groups
        and filters a multiple of 8: 32, 16 or 8), so that the groups stay valid.
        """
        f = scale_width(filters, self.width) if scale else filters
        g = math.gcd(groups, f)
        return self.add(specs.Conv(f, size, stride, size // 2, g, True, activation))

    def route(self, *layers: int, groups: int = 1, group_id: int = 0) -> int:
        return self.add(specs.Route(tuple(layers), groups, group_id))

    def fuse(self, other: int, fusion: str) -> int:
        """Merges the last layer with `other`: concat (route), add or weighted add (shortcut)."""
        if fusion == "concat":
            return self.route(self.last, other)
        if fusion == "add":
            return self.add(specs.Shortcut((other,)))
        if fusion == "weighted":
            return self.add(specs.Shortcut((other,), "linear", "per_feature", "relu"))
        raise ValueError(f"fusion must be concat, add or weighted, got {fusion!r}")

    def build(self) -> tuple[specs.Spec, ...]:
        return tuple(self.layers)


def classifier_layers(
    backbone,
    num_classes: int,
    activation: str,
    dropblock_probability: float,
    dropblock_size: int,
    width: float,
    depth: float,
) -> tuple[specs.Spec, ...]:
    """``backbone(b, activation, depth, dropblock)``'s layers as an image classifier: global
    average pooling and a linear 1x1 conv to ``num_classes`` logits (darknet's [avgpool],
    [convolutional] and [softmax]); DropBlock after each stage when its probability is > 0."""
    b = Builder(width)
    dropblock = (
        specs.DropBlock(dropblock_probability, dropblock_size)
        if dropblock_probability > 0
        else None
    )
    backbone(b, activation, depth, dropblock)
    b.add(specs.AvgPool())
    b.add(specs.Conv(num_classes, 1, 1, 0, 1, False, "linear"))
    return b.build()
