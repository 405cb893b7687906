"""Layer specifications: the network as a list of darknet-style layers.

Every model in the zoo is a tuple of these frozen dataclasses, run in order by
`yolov4_jax.models.network.Network`. The same tuple is what a darknet `.cfg` parses to
(`yolov4_jax.darknet.cfg`), so a network built in Python, one read from a cfg and one
written back to a cfg are the same object, and darknet's `.weights` map onto it layer by
layer. Layer references (`Route.layers`, `Shortcut.layers`, `Sam.layer`) are absolute
indices into the tuple; the cfg writer turns them back into darknet's relative form.
"""

from __future__ import annotations

import dataclasses
import math

ACTIVATIONS = ("linear", "leaky", "mish", "swish", "relu", "logistic")


@dataclasses.dataclass(frozen=True)
class Conv:
    """darknet [convolutional]: conv, then BatchNorm or a bias, then the activation."""

    filters: int
    size: int = 1
    stride: int = 1
    padding: int = 0  # per side, symmetric (darknet: pad=1 -> size // 2)
    groups: int = 1
    batch_normalize: bool = False
    activation: str = "linear"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {ACTIVATIONS}")


@dataclasses.dataclass(frozen=True)
class MaxPool:
    """darknet [maxpool]: `padding` is the total; darknet puts padding // 2 before."""

    size: int
    stride: int
    padding: int


@dataclasses.dataclass(frozen=True)
class Upsample:
    """darknet [upsample]: nearest neighbour by an integer factor."""

    stride: int = 2


@dataclasses.dataclass(frozen=True)
class Route:
    """darknet [route]: channel concatenation; with groups, chunk `group_id` of each input."""

    layers: tuple[int, ...]
    groups: int = 1
    group_id: int = 0


@dataclasses.dataclass(frozen=True)
class Shortcut:
    """darknet [shortcut]: previous layer plus `layers`, optionally with learned weights.

    Without weights the layers may differ in depth: the output has the previous layer's
    channels and each of `layers` adds into the leading channels it has
    (`network.add_residual`, darknet's partial residual).

    `weights_type` "per_feature" or "per_channel" is the paper's weighted residual
    connection (MiWRC, BiFPN-style fusion); inputs are ordered (previous, *layers).
    """

    layers: tuple[int, ...]
    activation: str = "linear"
    weights_type: str = "none"  # none | per_feature | per_channel
    weights_normalization: str = "none"  # none | relu | softmax


@dataclasses.dataclass(frozen=True)
class Sam:
    """darknet [sam]: previous layer times layer `layer` (the paper's point-wise SAM)."""

    layer: int


@dataclasses.dataclass(frozen=True)
class SpatialAttention:
    """CBAM's spatial attention (not a darknet layer): x * sigmoid(conv([mean_c, max_c]))."""

    size: int = 7


@dataclasses.dataclass(frozen=True)
class ChannelAttention:
    """CBAM's channel attention (not a darknet layer): x * sigmoid(MLP(avg_hw) + MLP(max_hw)).

    The MLP (C -> C / reduction, ReLU, -> C) is shared by the two pooled vectors.
    """

    reduction: int = 16


@dataclasses.dataclass(frozen=True)
class DropBlock:
    """darknet [dropout] dropblock=1: drops square blocks of features in training."""

    probability: float = 0.1
    block_size: int = 7


@dataclasses.dataclass(frozen=True)
class AvgPool:
    """darknet [avgpool]: global average pooling to [N, 1, 1, C] (classifier heads)."""


@dataclasses.dataclass(frozen=True)
class Yolo:
    """darknet [yolo]: a detection head; its input is the raw prediction of the head.

    Fields and defaults are darknet's (parser.c::parse_yolo); `anchors` holds all `num`
    anchors as (w, h) pixel pairs and `mask` the ones this head predicts.
    """

    mask: tuple[int, ...]
    anchors: tuple[tuple[float, float], ...]
    classes: int = 20
    scale_x_y: float = 1.0
    new_coords: bool = False
    jitter: float = 0.2
    ignore_thresh: float = 0.5
    truth_thresh: float = 1.0
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    delta_normalizer: float = 1.0
    iou_loss: str = "mse"
    nms_kind: str = "default"
    beta_nms: float = 0.6
    max_delta: float = math.inf
    objectness_smooth: bool = False
    label_smooth_eps: float = 0.0
    random: float = 0.0
    resize: float = 1.0

    def __post_init__(self):
        if not self.mask or any(not 0 <= m < len(self.anchors) for m in self.mask):
            raise ValueError(
                f"[yolo] mask {self.mask} needs anchors 0..{max(self.mask, default=0)}, "
                f"but {len(self.anchors)} anchors were given: {self.anchors}"
            )

    @property
    def num(self) -> int:
        return len(self.anchors)

    @property
    def head_anchors(self) -> tuple[tuple[float, float], ...]:
        """The (w, h) pixel anchors this head predicts, in mask order."""
        return tuple(self.anchors[m] for m in self.mask)


Spec = (
    Conv
    | MaxPool
    | Upsample
    | Route
    | Shortcut
    | Sam
    | SpatialAttention
    | ChannelAttention
    | DropBlock
)
Spec = Spec | AvgPool | Yolo
