"""YOLOv4-tiny: a CSP-style backbone of channel-split blocks and two YOLO heads.

`yolov4_tiny_layers()` with its defaults is layer-for-layer darknet's yolov4-tiny.cfg.
"""

from __future__ import annotations

from yolov4_jax.models import specs
from yolov4_jax.models.builder import Builder
from yolov4_jax.models.yolov4 import _float_pairs

ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))
# Head at stride 32 first, then stride 16; anchor 0 is unused, as in yolov4-tiny.cfg.
MASKS = ((3, 4, 5), (1, 2, 3))
HEAD_OPTIONS = dict(
    scale_x_y=1.05,
    cls_normalizer=1.0,
    iou_normalizer=0.07,
    iou_loss="ciou",
    ignore_thresh=0.7,
    truth_thresh=1.0,
    random=0.0,
    jitter=0.3,
    resize=1.5,
    nms_kind="greedynms",
    beta_nms=0.6,
)


def _tiny_block(b: Builder, filters: int, activation: str) -> tuple[int, int]:
    """conv, half the channels through two convs, concat, 1x1, concat with the input conv."""
    first = b.conv(filters, 3, activation)
    b.route(first, groups=2, group_id=1)
    a = b.conv(filters // 2, 3, activation)
    b.conv(filters // 2, 3, activation)
    b.route(b.last, a)
    inner = b.conv(filters, 1, activation)
    b.route(first, inner)
    b.add(specs.MaxPool(2, 2, 1))
    return inner, b.last


def yolov4_tiny_layers(
    num_classes: int = 80,
    anchors: tuple[tuple[float, float], ...] = ANCHORS,
    masks: tuple[tuple[int, ...], ...] = MASKS,
    activation: str = "leaky",
    width: float = 1.0,
    head_options: dict | None = None,
) -> tuple[specs.Spec, ...]:
    """The YOLOv4-tiny layer list; heads in cfg order (stride 32, then 16)."""
    b = Builder(width)
    b.conv(32, 3, activation, stride=2)
    b.conv(64, 3, activation, stride=2)
    _tiny_block(b, 64, activation)
    _tiny_block(b, 128, activation)
    c4, _ = _tiny_block(b, 256, activation)
    b.conv(512, 3, activation)
    p5 = b.conv(256, 1, activation)
    options = dict(HEAD_OPTIONS, **(head_options or {}))
    options.setdefault("classes", num_classes)

    def head(k: int) -> None:
        yolo = specs.Yolo(mask=tuple(masks[k]), anchors=_float_pairs(anchors), **options)
        b.add(specs.Conv(len(yolo.mask) * (5 + yolo.classes), 1, 1, 0, 1, False, "linear"))
        b.add(yolo)

    b.conv(512, 3, activation)
    head(0)
    b.route(p5)
    b.conv(128, 1, activation)
    b.add(specs.Upsample(2))
    b.route(b.last, c4)
    b.conv(256, 3, activation)
    head(1)
    return b.build()
