"""From raw head outputs to detections: decode every head, then NMS, in one jitted function.

Shared by detection (`yolov4_jax.detect`), evaluation and the training loop's periodic
evaluation, so every path decodes boxes the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from yolov4_jax.detection.decode import decode_yolo
from yolov4_jax.detection.nms import Detections, nms
from yolov4_jax.models import Network, specs
from yolov4_jax.ops import cpu_gemm


@dataclasses.dataclass(frozen=True)
class NmsOptions:
    """Post-processing settings (darknet's detector defaults: thresh .25, nms .45)."""

    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    kind: str = "greedy"  # greedy | diou (DIoU-NMS, paper section 3.4)
    beta: float = 0.6  # DIoU-NMS exponent (darknet's beta_nms)
    max_detections: int = 100
    pre_nms_top_k: int = 1000


def nms_options_for(heads: Sequence[specs.Yolo], **overrides) -> NmsOptions:
    """NmsOptions with the cfg's nms_kind and beta_nms, as darknet reads them: only the last
    [yolo] layer's nms_kind counts; `diounms` uses its beta_nms, and `greedynms` is DIoU-NMS
    with beta fixed at 0.6 (since AlexeyAB/darknet c7e3e2e, see `yolov4_jax.detection.nms`)."""
    head = heads[-1]
    if head.nms_kind == "diounms":
        options = NmsOptions(kind="diou", beta=head.beta_nms)
    elif head.nms_kind == "greedynms":
        options = NmsOptions(kind="diou", beta=0.6)
    else:
        options = NmsOptions(kind="greedy")
    return dataclasses.replace(options, **overrides)


def decode_heads(
    outputs: Sequence[jax.Array], heads: Sequence[specs.Yolo], image_hw: tuple[int, int]
) -> tuple[jax.Array, jax.Array]:
    """All heads decoded and concatenated.

    Returns boxes `[N, M, 4]` xyxy normalised to the network input and scores `[N, M, C]`
    (objectness times class probability, darknet's `prob`), M summed over heads.
    """
    height, width = image_hw
    all_boxes, all_scores = [], []
    for raw, head in zip(outputs, heads, strict=True):
        # get_yolo_box divides the pixel anchors by the network input size.
        anchors = jnp.asarray(head.head_anchors, jnp.float32) / jnp.asarray([width, height])
        boxes, obj, cls = decode_yolo(
            raw,
            anchors,
            num_classes=head.classes,
            scale_x_y=head.scale_x_y,
            new_coords=bool(head.new_coords),
        )
        all_boxes.append(boxes)
        all_scores.append(obj[..., None] * cls)
    return jnp.concatenate(all_boxes, axis=1), jnp.concatenate(all_scores, axis=1)


def with_compute(model: Network, dtype: str | None = None, conv_algorithm: str | None = None):
    """``model`` with its compute dtype ("float32", "bfloat16") and `model.conv_algorithm`
    replaced where given (the command lines' ``--dtype`` and ``--conv_algorithm``)."""
    if dtype:
        model = model.clone(dtype=jnp.dtype(dtype))
    if conv_algorithm:
        model = model.clone(conv_algorithm=conv_algorithm)
    if jnp.dtype(model.dtype) == jnp.bfloat16 and jax.default_backend() == "cpu":
        advice = cpu_gemm.bf16_advice(model.conv_algorithm)
        if advice:
            logging.warning("bfloat16: %s", advice)
    return model


def prepare_variables(model: Network, variables):
    """``variables`` made ready for inference with ``model``, computed once instead of on
    every call:

    - in the collection "winograd", the Winograd transform of every 3x3 kernel that the
      network runs by Winograd's algorithm (`model.conv_algorithm`; on the CPU in float32
      for layers of >= 128 channels, at any map size once prepared): YOLOv4 at 416, batch 1,
      is then faster by what the transforms cost and by its 13 x 13 layers, which pay only
      with the transforms done beforehand (docs/benchmarks.md, "Winograd convolutions");
    - with a compute dtype other than float32 (`model.dtype`), every convolution kernel
      stored in that dtype, so the layers do not round 64 M weights on every call (80 ms of
      YOLOv4's 210 ms at 416 on the CPU with ``conv_algorithm="mkl"``). BatchNorm's
      parameters and statistics and the biases stay float32.

    For inference only (no gradient reaches the kernels through them); recompute after the
    weights change. Returns ``variables`` itself, without compiling anything, where neither
    applies."""
    base = {k: v for k, v in variables.items() if k != "winograd"}
    if jnp.dtype(model.dtype) != jnp.float32 and "params" in base:
        params = jax.tree_util.tree_map_with_path(
            lambda path, leaf: (
                leaf.astype(model.dtype) if getattr(path[-1], "key", None) == "kernel" else leaf
            ),
            base["params"],
        )
        variables = base = {**base, "params": params}
    transforms = functools.partial(_winograd_transforms, model)
    if not jax.eval_shape(transforms, base).get("winograd"):  # traces only
        return variables
    return {**base, "winograd": transforms(base)["winograd"]}


@functools.partial(jax.jit, static_argnums=0)
def _winograd_transforms(model: Network, variables):
    # The transforms depend on the kernels only; any input size reaches every layer.
    channels = int(dict(model.net).get("channels", 3))
    images = jnp.zeros((1, 64, 64, channels), jnp.float32)
    return model.apply(variables, images, mutable=["winograd"])[1]


def make_predict_fn(model: Network, options: NmsOptions):
    """A jitted `predict(variables, images) -> Detections` for `model`.

    `images` is `[N, H, W, 3]`, uint8 (divided by 255 on the device) or float in [0, 1].
    Detection boxes are xyxy normalised to the input; traced once per input shape.
    """
    heads = model.heads
    if not heads:
        raise ValueError("the model has no [yolo] layers, so it is not a detector")

    @jax.jit
    def predict(variables, images: jax.Array) -> Detections:
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 255.0
        outputs = model.apply(variables, images, train=False)
        boxes, scores = decode_heads(outputs, heads, images.shape[1:3])
        return nms(
            jnp.clip(boxes, 0.0, 1.0),
            scores,
            iou_threshold=options.iou_threshold,
            score_threshold=options.score_threshold,
            max_detections=options.max_detections,
            kind=options.kind,
            beta=options.beta,
            pre_nms_top_k=options.pre_nms_top_k,
        )

    return predict
