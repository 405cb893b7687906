"""YOLOv4-CSP (Scaled-YOLOv4, Wang et al. 2021): CSP in the neck too, new coordinates.

`yolov4_csp_layers()` with its defaults is layer-for-layer darknet's yolov4-csp.cfg.
"""

from __future__ import annotations

from yolov4_jax.models import specs
from yolov4_jax.models.builder import Builder, scale_depth
from yolov4_jax.models.yolov4 import ANCHORS, MASKS, _float_pairs, csp_stage, spp

HEAD_OPTIONS = dict(
    scale_x_y=2.0,
    new_coords=True,
    jitter=0.1,
    ignore_thresh=0.7,
    truth_thresh=1.0,
    iou_thresh=0.2,
    cls_normalizer=0.5,
    iou_normalizer=0.05,
    iou_loss="ciou",
    nms_kind="diounms",
    beta_nms=0.6,
    resize=1.5,
)
# Per-head values of yolov4-csp.cfg.
PER_HEAD = (
    dict(obj_normalizer=4.0, objectness_smooth=False, max_delta=5.0),
    dict(obj_normalizer=1.0, objectness_smooth=True, max_delta=5.0),
    dict(obj_normalizer=0.4, objectness_smooth=True, max_delta=2.0),
)


def _csp_neck_block(b: Builder, filters: int, activation: str) -> int:
    """The CSP version of YOLOv4's five-conv block."""
    x = b.conv(filters, 1, activation)
    part_a = b.conv(filters, 1, activation)
    b.route(x)
    b.conv(filters, 1, activation)
    b.conv(filters, 3, activation)
    b.conv(filters, 1, activation)
    b.conv(filters, 3, activation)
    b.route(b.last, part_a)
    return b.conv(filters, 1, activation)


def yolov4_csp_layers(
    num_classes: int = 80,
    anchors: tuple[tuple[float, float], ...] = ANCHORS,
    masks: tuple[tuple[int, ...], ...] = MASKS,
    activation: str = "mish",
    width: float = 1.0,
    depth: float = 1.0,
    head_options: dict | None = None,
) -> tuple[specs.Spec, ...]:
    """The YOLOv4-CSP layer list; heads in stride order 8, 16, 32."""
    act = activation
    b = Builder(width)
    b.conv(32, 3, act)
    stem = b.conv(64, 3, act, stride=2)
    b.conv(32, 1, act)
    b.conv(64, 3, act)
    b.add(specs.Shortcut((stem,)))
    outs = [
        csp_stage(b, f, scale_depth(n, depth), act, f // 2)
        for f, n in ((128, 2), (256, 8), (512, 8), (1024, 4))
    ]
    c3, c4 = outs[1], outs[2]
    # CSP-SPP: the SPP block on one path of a cross-stage split.
    part_a = b.conv(512, 1, act)
    b.route(outs[3])
    b.conv(512, 1, act)
    b.conv(512, 3, act)
    b.conv(512, 1, act)
    spp(b)
    b.conv(512, 1, act)
    b.conv(512, 3, act)
    b.route(b.last, part_a)
    p5 = b.conv(512, 1, act)
    b.conv(256, 1, act)
    up = b.add(specs.Upsample(2))
    b.route(c4)
    b.conv(256, 1, act)
    b.route(b.last, up)
    p4 = _csp_neck_block(b, 256, act)
    b.conv(128, 1, act)
    up = b.add(specs.Upsample(2))
    b.route(c3)
    b.conv(128, 1, act)
    b.route(b.last, up)
    p3 = _csp_neck_block(b, 128, act)
    options = dict(HEAD_OPTIONS, **(head_options or {}))
    options.setdefault("classes", num_classes)

    def head(k: int, filters: int) -> None:
        yolo = specs.Yolo(
            mask=tuple(masks[k]), anchors=_float_pairs(anchors), **dict(options, **PER_HEAD[k])
        )
        b.conv(filters, 3, act)
        # new_coords: the prediction conv applies the logistic itself (yolo_layer.c).
        b.add(specs.Conv(len(yolo.mask) * (5 + yolo.classes), 1, 1, 0, 1, False, "logistic"))
        b.add(yolo)

    head(0, 256)
    b.route(p3)
    b.conv(256, 3, act, stride=2)
    b.route(b.last, p4)
    n4 = _csp_neck_block(b, 256, act)
    head(1, 512)
    b.route(n4)
    b.conv(512, 3, act, stride=2)
    b.route(b.last, p5)
    _csp_neck_block(b, 512, act)
    head(2, 1024)
    return b.build()
