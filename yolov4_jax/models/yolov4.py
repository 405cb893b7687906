"""YOLOv4 (Bochkovskiy et al. 2020): CSPDarknet53 + SPP + PAN + three YOLO heads.

`yolov4_layers()` with its defaults is layer-for-layer darknet's yolov4.cfg (a test checks
this), so darknet's yolov4.weights load into it. The keyword arguments are the paper's
architecture ablations; each changes the layer list, and the result still exports to a
darknet cfg (except CBAM's spatial attention, which darknet lacks).
"""

from __future__ import annotations

import functools

from yolov4_jax.models import specs
from yolov4_jax.models.builder import Builder, classifier_layers, scale_depth

ANCHORS = (
    (12, 16),
    (19, 36),
    (40, 28),
    (36, 75),
    (76, 55),
    (72, 146),
    (142, 110),
    (192, 243),
    (459, 401),
)
MASKS = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
# Per-head eliminate-grid-sensitivity factors of yolov4.cfg (paper section 3.4).
SCALE_X_Y = (1.2, 1.1, 1.05)
# The [yolo] options shared by yolov4.cfg's three heads.
HEAD_OPTIONS = dict(
    jitter=0.3,
    ignore_thresh=0.7,
    truth_thresh=1.0,
    iou_thresh=0.213,
    cls_normalizer=1.0,
    iou_normalizer=0.07,
    iou_loss="ciou",
    nms_kind="greedynms",
    beta_nms=0.6,
    max_delta=5.0,
)
STAGE_BLOCKS = (1, 2, 8, 8, 4)
STAGE_FILTERS = (64, 128, 256, 512, 1024)


def _float_pairs(anchors) -> tuple[tuple[float, float], ...]:
    return tuple((float(w), float(h)) for w, h in anchors)


def csp_stage(
    b: Builder,
    filters: int,
    blocks: int,
    activation: str,
    hidden: int,
    dropblock: specs.DropBlock | None = None,
    residual: str = "add",
) -> int:
    """A cross-stage-partial stage: stride-2 conv, two 1x1 paths, residual blocks on one.

    ``residual`` is how each block joins its input: ``add`` (darknet's [shortcut]) or
    ``weighted``, the paper's MiWRC (BoS for the backbone, section 3.4): a [shortcut] with
    per-feature weights normalised by ReLU (darknet's weights_type=per_feature,
    weights_normalization=relu).
    """
    down = b.conv(filters, 3, activation, stride=2)
    part_a = b.conv(hidden, 1, activation)
    b.route(down)
    b.conv(hidden, 1, activation)
    for _ in range(blocks):
        block_in = b.last
        b.conv(filters // 2, 1, activation)
        b.conv(hidden, 3, activation)
        b.fuse(block_in, residual)
    b.conv(hidden, 1, activation)
    b.route(b.last, part_a)
    out = b.conv(filters, 1, activation)
    return b.add(dropblock) if dropblock is not None else out


def cspdarknet53(
    b: Builder,
    activation: str = "mish",
    depth: float = 1.0,
    dropblock: specs.DropBlock | None = None,
    residual: str = "add",
) -> list[int]:
    """CSPDarknet53 (Wang et al. 2020 + the YOLOv4 paper); returns the five stage outputs."""
    if residual not in ("add", "weighted"):
        raise ValueError(f"residual fusion must be add or weighted, got {residual!r}")
    b.conv(32, 3, activation)
    outputs = []
    for stage, (filters, blocks) in enumerate(zip(STAGE_FILTERS, STAGE_BLOCKS, strict=True)):
        # Stage 1 keeps the full width in its two paths; later stages halve it (CSP split).
        hidden = filters if stage == 0 else filters // 2
        outputs.append(
            csp_stage(
                b, filters, scale_depth(blocks, depth), activation, hidden, dropblock, residual
            )
        )
    return outputs


def cspdarknet53_classifier_layers(
    num_classes: int = 1000,
    activation: str = "mish",
    dropblock_probability: float = 0.0,
    dropblock_size: int = 7,
    width: float = 1.0,
    depth: float = 1.0,
    residual_fusion: str = "add",
) -> tuple[specs.Spec, ...]:
    """CSPDarknet53 as an image classifier (darknet's csdarknet53-omega.cfg head).

    The backbone layers are exactly those of `yolov4_layers` with the same activation,
    width, depth and DropBlock, so a trained classifier's backbone transfers into the
    detector (`yolov4_jax.models.transfer`); then global average pooling and a linear 1x1
    conv to ``num_classes`` logits (darknet's [avgpool], [convolutional] and [softmax]).
    """
    backbone = functools.partial(cspdarknet53, residual=residual_fusion)
    return classifier_layers(
        backbone, num_classes, activation, dropblock_probability, dropblock_size, width, depth
    )


def spp(b: Builder) -> int:
    """The paper's modified SPP: stride-1 max-pools 5, 9, 13 concatenated with their input."""
    source = b.last
    pools = []
    for size in (5, 9, 13):
        if pools:
            b.route(source)
        pools.append(b.add(specs.MaxPool(size, 1, size - 1)))
    return b.route(*reversed(pools), source)


def _five_convs(b: Builder, filters: int, activation: str) -> int:
    for k in range(5):
        b.conv(filters if k % 2 == 0 else filters * 2, 1 if k % 2 == 0 else 3, activation)
    return b.last


def _attend(b: Builder, attention: str) -> int:
    """Attention on the last layer: none, the paper's SAM, or CBAM (channel then spatial)."""
    if attention == "sam":
        # The paper's modified SAM (section 3.4; Figure 5): point-wise attention from a
        # logistic conv (with BN, as yolov4-sam-mish-csp-reorg-bfm.cfg), multiplied in by
        # darknet's [sam] layer.
        features = b.last
        b.conv(b.channels(features), 1, "logistic", scale=False)
        return b.add(specs.Sam(features))
    if attention == "cbam":
        b.add(specs.ChannelAttention(16))
        return b.add(specs.SpatialAttention(7))
    if attention != "none":
        raise ValueError(f"attention must be none, sam or cbam, got {attention!r}")
    return b.last


def _head(b: Builder, source: int, filters: int, yolo: specs.Yolo, activation: str) -> int:
    """3x3 conv, 1x1 prediction and [yolo] on ``source``."""
    if source != b.last:
        b.route(source)
    b.conv(filters * 2, 3, activation)
    n_out = len(yolo.mask) * (5 + yolo.classes)
    b.add(specs.Conv(n_out, 1, 1, 0, 1, False, "linear"))
    return b.add(yolo)


def yolov4_layers(
    num_classes: int = 80,
    anchors: tuple[tuple[float, float], ...] = ANCHORS,
    masks: tuple[tuple[int, ...], ...] = MASKS,
    scale_x_y: tuple[float, ...] = SCALE_X_Y,
    backbone_activation: str = "mish",
    neck_activation: str = "leaky",
    neck: str = "pan",
    residual_fusion: str = "add",
    use_spp: bool = True,
    attention: str = "none",
    fusion: str = "concat",
    dropblock_probability: float = 0.0,
    dropblock_size: int = 7,
    width: float = 1.0,
    depth: float = 1.0,
    head_options: dict | None = None,
) -> tuple[specs.Spec, ...]:
    """The YOLOv4 layer list; see the module docstring. Heads come in stride order 8, 16, 32."""
    if neck not in ("pan", "fpn"):
        raise ValueError(f"neck must be pan or fpn, got {neck!r}")
    b = Builder(width)
    dropblock = (
        specs.DropBlock(dropblock_probability, dropblock_size)
        if dropblock_probability > 0
        else None
    )
    _, _, c3, c4, _ = cspdarknet53(b, backbone_activation, depth, dropblock, residual_fusion)
    act = neck_activation
    b.conv(512, 1, act)
    b.conv(1024, 3, act)
    b.conv(512, 1, act)
    if use_spp:
        spp(b)
    b.conv(512, 1, act)
    b.conv(1024, 3, act)
    b.conv(512, 1, act)
    # DropBlock in the detector too (paper section 3.4): after each neck output.
    neck_out = (lambda: b.add(dropblock)) if dropblock is not None else (lambda: b.last)
    p5 = neck_out()
    # Top-down path (FPN): upsample, fuse with the lateral backbone feature.
    b.conv(256, 1, act)
    up = b.add(specs.Upsample(2))
    b.route(c4)
    b.conv(256, 1, act)
    b.fuse(up, fusion)
    _five_convs(b, 256, act)
    p4 = neck_out()
    b.conv(128, 1, act)
    up = b.add(specs.Upsample(2))
    b.route(c3)
    b.conv(128, 1, act)
    b.fuse(up, fusion)
    _five_convs(b, 128, act)
    neck_out()  # p3
    options = dict(HEAD_OPTIONS, **(head_options or {}))
    options.setdefault("classes", num_classes)
    if "scale_x_y" in options:  # one value for every head (e.g. 1.0: grid sensitivity off)
        scale_x_y = (options.pop("scale_x_y"),) * len(masks)

    def yolo(k: int) -> specs.Yolo:
        extra = {"random": 1.0} if k == len(masks) - 1 and "random" not in options else {}
        return specs.Yolo(
            mask=tuple(masks[k]),
            anchors=_float_pairs(anchors),
            scale_x_y=scale_x_y[k],
            **options,
            **extra,
        )

    # Attention sits on each head's neck output, which (in PAN) also feeds the bottom-up path,
    # as darknet's yolov4-sam-mish-csp-reorg-bfm.cfg places its [sam] layers.
    a3 = _attend(b, attention)  # on p3, the last layer
    _head(b, a3, 128, yolo(0), act)
    if neck == "fpn":
        for source, filters, k in ((p4, 256, 1), (p5, 512, 2)):
            b.route(source)
            _head(b, _attend(b, attention), filters, yolo(k), act)
        return b.build()
    # Bottom-up path (PAN, Liu et al. 2018), the paper's choice.
    b.route(a3)
    b.conv(256, 3, act, stride=2)
    b.fuse(p4, fusion)
    _five_convs(b, 256, act)
    neck_out()
    a4 = _attend(b, attention)
    _head(b, a4, 256, yolo(1), act)
    b.route(a4)
    b.conv(512, 3, act, stride=2)
    b.fuse(p5, fusion)
    _five_convs(b, 512, act)
    neck_out()
    _head(b, _attend(b, attention), 512, yolo(2), act)
    return b.build()
