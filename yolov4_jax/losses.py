"""The YOLOv4 loss: box (MSE or the IoU family), objectness with the ignore rule, class BCE.

Follows darknet's yolo_layer.c::forward_yolo_layer, but as a scalar loss differentiated by
autodiff rather than darknet's hand-written deltas. Per head, for every prediction:

* **Box** at positives (`yolov4_jax.targets.assign_targets`):
  ``iou_normalizer * (1 - IoU_kind(pred, truth))`` for ``iou|giou|diou|ciou``, or for ``mse``
  ``0.5 * iou_normalizer * (2 - w*h) * |t_pred - t_truth|^2`` in darknet's t-space
  (tx = x*W - i after ``scale_x_y``, tw = log(w*net_w / anchor_w), or sqrt(w*net_w /
  (4*anchor_w)) with ``new_coords``), whose gradient is delta_yolo_box's MSE delta.
* **Objectness**: ``obj_normalizer * BCE(obj, 1)`` at positives and ``obj_normalizer *
  BCE(obj, 0)`` elsewhere, except that a prediction whose best IoU with any valid ground
  truth of its image exceeds ``ignore_thresh`` is ignored, if some class probability of it
  exceeds ``ignore_class_thresh`` (0.25; darknet's compare_yolo_class, which does not check
  that the class matches). With ``objectness_smooth`` such a prediction gets that IoU as its
  target instead of being ignored.
* **Class** at positives: ``cls_normalizer * BCE(cls, y)`` summed over classes, with
  darknet's label smoothing ``y = y*(1 - eps) + eps/2`` (delta_yolo_class).

Normalisation: darknet sums the deltas of all images of a batch and its update divides by
the batch size, so the loss here is the per-image sum (over heads, cells, anchors, classes)
averaged over the batch. With an all-False ``mask`` only the "no object" objectness term
remains: Self-Adversarial Training uses exactly that to suppress detections.

Where autodiff differs from darknet's deltas:

* IoU losses: darknet (box.c::dx_box_iou) takes the gradient with respect to (x, y, w, h),
  multiplies the w, h parts by exp(tw) and stops there: no sigmoid, ``scale_x_y``, 1/grid or
  anchor factors. ``box_gradient="darknet"`` (the default) reproduces exactly that with a
  straight-through estimator; ``"autodiff"`` follows the chain rule to the raw outputs, which
  makes the x, y gradient about ``4 * grid / scale_x_y`` times (30-100x) weaker than darknet's,
  so ``iou_normalizer`` (.07, tuned for darknet's deltas) then under-weights the box term and
  boxes learn far more slowly. CIoU's alpha is a constant in both (`yolov4_jax.boxes.ciou`).
* darknet clips each box delta to ``max_delta``; here the gradient reaching each raw box
  channel through the IoU loss is clipped to ``max_delta`` per image (a custom VJP), which is
  the same bound in raw-output units.
* Objectness and class: darknet's delta ``y - p`` is the BCE gradient with respect to the
  logit, so they agree. ``new_coords`` heads output probabilities (the conv applied the
  logistic), and BCE is taken on them, clipped away from 0 and 1.
* ``cls_normalizer`` scales the class loss always; darknet only applies it with
  ``counters_per_class`` (a quirk; yolov4.cfg has 1.0, so nothing changes there).
* Darknet's ``averages_yolo_deltas`` (box deltas divided by the number of classes of a cell
  with iou_thresh < 1) and ``truth_thresh`` < 1 (disabled in every shipped cfg) are not
  reproduced; collisions follow `yolov4_jax.targets` (the later truth gives the box).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax import boxes as box_ops
from yolov4_jax import targets as targets_lib
from yolov4_jax.decode import MAX_LOG_SCALE, decode_yolo
from yolov4_jax.models import specs

Array = jax.Array

BOX_LOSSES = ("mse", "iou", "giou", "diou", "ciou")
BOX_GRADIENTS = ("darknet", "autodiff")
_IOU_FUNCTIONS = {
    "iou": box_ops.iou,
    "giou": box_ops.giou,
    "diou": box_ops.diou,
    "ciou": box_ops.ciou,
}
# Probabilities of new_coords heads are clipped this far from 0 and 1 inside the log.
_PROB_EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """Loss settings: overrides of the heads' darknet ``[yolo]`` values, and loss-wide knobs.

    A field left at None keeps each head's own value from its `specs.Yolo` (the model's cfg:
    ciou, iou_normalizer .07, ignore_thresh .7, iou_thresh .213... for yolov4.cfg), so
    per-head settings such as yolov4-csp's obj_normalizer 4/1/.4 survive. Build it from the
    config with `loss_options`.
    """

    box_loss: str | None = None  # mse | iou | giou | diou | ciou (darknet's iou_loss)
    iou_normalizer: float | None = None
    obj_normalizer: float | None = None
    cls_normalizer: float | None = None
    ignore_thresh: float | None = None
    iou_thresh: float | None = None
    label_smoothing: float | None = None  # darknet's label_smooth_eps
    objectness_smooth: bool | None = None
    max_delta: float | None = None
    ignore_class_thresh: float = 0.25  # compare_yolo_class's conf_thresh for the ignore rule
    box_gradient: str = "darknet"  # darknet | autodiff: how IoU-loss gradients reach tx..th

    def __post_init__(self):
        if self.box_gradient not in BOX_GRADIENTS:
            raise ValueError(f"box_gradient {self.box_gradient!r} is not one of {BOX_GRADIENTS}")
        if self.box_loss is not None and self.box_loss not in BOX_LOSSES:
            raise ValueError(f"box_loss {self.box_loss!r} is not one of {BOX_LOSSES}")

    def resolve(self, heads: Sequence[specs.Yolo]) -> tuple[specs.Yolo, ...]:
        """The heads with these overrides applied: what the loss actually uses."""
        overrides = {
            "iou_loss": self.box_loss,
            "iou_normalizer": self.iou_normalizer,
            "obj_normalizer": self.obj_normalizer,
            "cls_normalizer": self.cls_normalizer,
            "ignore_thresh": self.ignore_thresh,
            "iou_thresh": self.iou_thresh,
            "label_smooth_eps": self.label_smoothing,
            "objectness_smooth": self.objectness_smooth,
            "max_delta": self.max_delta,
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        resolved = tuple(dataclasses.replace(h, **overrides) for h in heads)
        for head in resolved:
            if head.iou_loss not in BOX_LOSSES:
                raise ValueError(f"iou_loss {head.iou_loss!r} is not one of {BOX_LOSSES}")
            if head.truth_thresh < 1.0:
                raise ValueError("truth_thresh < 1 is not supported (every shipped cfg has 1)")
        return resolved


def loss_options(loss_config: Mapping[str, Any]) -> LossOptions:
    """Builds `LossOptions` from ``config.loss`` (see configs/base.py)."""
    fields = {f.name for f in dataclasses.fields(LossOptions)}
    unknown = set(loss_config.keys()) - fields
    if unknown:
        raise ValueError(f"unknown loss config fields {sorted(unknown)}")
    values = {k: loss_config[k] for k in loss_config.keys()}
    if values.get("box_loss") == "":
        values["box_loss"] = None
    return LossOptions(**values)


def yolo_loss(
    outputs: Sequence[Array],
    batch: Mapping[str, Array],
    heads: Sequence[specs.Yolo],
    options: LossOptions,
    *,
    image_hw: tuple[int, int] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The YOLOv4 loss of a batch.

    Args:
      outputs: one raw ``[B, H_k, W_k, A_k * (5 + C)]`` array per head (`Network` output).
      batch: ``boxes [B, M, 4]`` xyxy in [0, 1] of the canvas, ``labels [B, M]`` int,
        ``mask [B, M]`` bool (padding rows False); ``image [B, H, W, 3]`` gives the canvas
        size unless ``image_hw`` is passed.
      heads: the network's `Yolo` specs, in output order (`Network.heads`).
      options: `LossOptions` (from `loss_options(config.loss)`).
      image_hw: canvas ``(height, width)`` in pixels; static.

    Returns:
      ``(loss, metrics)``: the loss is the per-image sum averaged over the batch;
      ``metrics`` holds ``box``, ``obj``, ``cls`` (the same normalisation; they add up to
      ``total``, equal to the loss), ``num_positives`` (positive cell-anchor slots in the
      batch), ``num_ignored`` (negatives whose objectness loss the ignore rule dropped),
      ``num_collisions`` (extra boxes that landed on an occupied slot) and ``mean_iou``
      (IoU of positive predictions with their targets).
    """
    heads = options.resolve(heads)
    if len(outputs) != len(heads):
        raise ValueError(f"{len(outputs)} outputs but {len(heads)} heads")
    if image_hw is None:
        if "image" not in batch:
            raise ValueError("pass image_hw or put the images under batch['image']")
        image_hw = tuple(batch["image"].shape[1:3])
    image_hw = (int(image_hw[0]), int(image_hw[1]))
    gt_boxes = jnp.asarray(batch["boxes"], jnp.float32)
    labels = jnp.asarray(batch["labels"], jnp.int32)
    gt_valid = targets_lib.valid_boxes(gt_boxes, labels, batch["mask"], heads[0].classes)
    grid_sizes = tuple((int(o.shape[1]), int(o.shape[2])) for o in outputs)
    head_targets = targets_lib.assign_targets(
        gt_boxes, labels, gt_valid, heads, grid_sizes, image_hw
    )

    sums = {k: jnp.zeros((), jnp.float32) for k in ("box", "obj", "cls")}
    counts = {k: jnp.zeros((), jnp.float32) for k in ("pos", "ignored", "collisions", "iou")}
    for raw, head, target in zip(outputs, heads, head_targets, strict=True):
        terms = _head_loss(
            jnp.asarray(raw, jnp.float32),
            head,
            target,
            gt_boxes,
            gt_valid,
            image_hw,
            options.ignore_class_thresh,
            options.box_gradient,
        )
        for k in sums:
            sums[k] = sums[k] + terms[k]
        for k in counts:
            counts[k] = counts[k] + terms[k]

    batch_size = gt_boxes.shape[0]
    metrics = {k: v / batch_size for k, v in sums.items()}
    total = metrics["box"] + metrics["obj"] + metrics["cls"]
    metrics["total"] = total
    metrics["num_positives"] = counts["pos"]
    metrics["num_ignored"] = counts["ignored"]
    metrics["num_collisions"] = counts["collisions"]
    metrics["mean_iou"] = counts["iou"] / jnp.maximum(counts["pos"], 1.0)
    return total, metrics


def _head_loss(
    raw: Array,
    head: specs.Yolo,
    target: targets_lib.HeadTargets,
    gt_boxes: Array,
    gt_valid: Array,
    image_hw: tuple[int, int],
    ignore_class_thresh: float,
    box_gradient: str = "darknet",
) -> dict[str, Array]:
    """Batch sums of one head's loss terms and counts (see the module docstring)."""
    batch, grid_h, grid_w, _ = raw.shape
    num_anchors, num_classes = len(head.mask), head.classes
    net_wh = np.asarray([image_hw[1], image_hw[0]], np.float32)
    anchors_px = np.asarray(head.head_anchors, np.float32)  # [A, 2]
    decode = functools.partial(
        decode_yolo,
        anchors=anchors_px / net_wh,
        num_classes=num_classes,
        scale_x_y=head.scale_x_y,
        new_coords=head.new_coords,
    )
    grid = (batch, grid_h, grid_w, num_anchors)
    out = raw.reshape(*grid, 5 + num_classes)
    positive = target.object_mask  # [B, H, W, A]
    pos_f = positive.astype(jnp.float32)

    # Box term. darknet clips the IoU-loss deltas to max_delta (per image, hence / batch).
    box_raw = raw
    if head.iou_loss != "mse" and math.isfinite(head.max_delta):
        box_raw = _clip_gradient(raw, head.max_delta / batch)
    pred_boxes, _, cls_prob = decode(box_raw)
    pred_boxes = pred_boxes.reshape(*grid, 4)  # [B, H, W, A, 4] xyxy
    if box_gradient == "darknet" and head.iou_loss != "mse":
        t = box_raw.reshape(*grid, 5 + num_classes)[..., :4]
        pred_boxes = _darknet_box_gradient(pred_boxes, t, bool(head.new_coords))
    safe_target = jnp.where(positive[..., None], target.box, jnp.asarray([0.0, 0.0, 1.0, 1.0]))
    if head.iou_loss == "mse":
        box_loss = _mse_box_loss(out, safe_target, head, anchors_px, net_wh)
    else:
        box_loss = head.iou_normalizer * (
            1.0 - _IOU_FUNCTIONS[head.iou_loss](pred_boxes, safe_target)
        )
    box_sum = jnp.sum(jnp.where(positive, box_loss, 0.0))
    pos_iou = jax.lax.stop_gradient(box_ops.iou(pred_boxes, safe_target))  # [B, H, W, A]

    # Ignore rule: best IoU of each (detached) prediction with any valid truth of its image.
    flat_pred = jax.lax.stop_gradient(pred_boxes).reshape(batch, -1, 1, 4)  # [B, P, 1, 4]
    ious = box_ops.iou(flat_pred, gt_boxes[:, None, :, :])  # [B, P, M]
    best_iou = jnp.max(jnp.where(gt_valid[:, None, :], ious, 0.0), axis=-1, initial=0.0)
    best_iou = best_iou.reshape(grid)
    class_ok = jnp.any(
        jax.lax.stop_gradient(cls_prob).reshape(*grid, num_classes) > ignore_class_thresh,
        axis=-1,
    )
    above = (best_iou > head.ignore_thresh) & class_ok & ~positive
    if head.objectness_smooth:
        # yolo_layer.c: above ignore_thresh the objectness target becomes the IoU.
        obj_target = jnp.where(positive, 1.0, jnp.where(above, best_iou, 0.0))
        obj_weight = jnp.ones(grid, jnp.float32)
        ignored = jnp.zeros(grid, bool)
    else:
        obj_target = pos_f
        obj_weight = jnp.where(above, 0.0, 1.0)
        ignored = above
    obj_bce = _bce(out[..., 4], obj_target, from_logits=not head.new_coords)
    obj_sum = head.obj_normalizer * jnp.sum(obj_weight * obj_bce)

    # Class term at positives, darknet's label smoothing (delta_yolo_class).
    eps = head.label_smooth_eps
    cls_target = target.classes * (1.0 - eps) + 0.5 * eps
    cls_bce = _bce(out[..., 5:], cls_target, from_logits=not head.new_coords)
    cls_sum = head.cls_normalizer * jnp.sum(pos_f[..., None] * cls_bce)

    return {
        "box": box_sum,
        "obj": obj_sum,
        "cls": cls_sum,
        "pos": jnp.sum(pos_f),
        "ignored": jnp.sum(ignored.astype(jnp.float32)),
        "collisions": jnp.sum(jnp.maximum(target.num_assigned - 1, 0)).astype(jnp.float32),
        "iou": jnp.sum(jnp.where(positive, pos_iou, 0.0)),
    }


def _mse_box_loss(
    out: Array, target_box: Array, head: specs.Yolo, anchors_px: np.ndarray, net_wh: np.ndarray
) -> Array:
    """darknet's MSE box loss in t-space, ``[B, H, W, A]`` (delta_yolo_box, iou_loss=mse)."""
    _, grid_h, grid_w, _, _ = out.shape
    grid_wh = jnp.asarray([grid_w, grid_h], jnp.float32)
    cell = jnp.stack(
        jnp.meshgrid(jnp.arange(grid_w), jnp.arange(grid_h), indexing="xy"), axis=-1
    ).astype(jnp.float32)[None, :, :, None, :]  # [1, H, W, 1, 2] (col, row)
    xywh = box_ops.xyxy_to_xywh(target_box)  # [B, H, W, A, 4]
    txy = xywh[..., :2] * grid_wh - cell  # truth.x * lw - i
    wh = jnp.maximum(xywh[..., 2:], 1e-9)  # no log(0) even where masked out
    ratio = wh * net_wh / anchors_px  # truth.w * net_w / anchor_w
    twh = jnp.sqrt(ratio / 4.0) if head.new_coords else jnp.log(ratio)

    pred_xy = out[..., :2] if head.new_coords else jax.nn.sigmoid(out[..., :2])
    # forward_yolo_layer's scal_add: the prediction compared with tx is after scale_x_y.
    pred_xy = head.scale_x_y * pred_xy - 0.5 * (head.scale_x_y - 1.0)
    pred_wh = out[..., 2:4]
    weight = head.iou_normalizer * (2.0 - wh[..., 0] * wh[..., 1])  # darknet's (2 - w*h)
    sq = jnp.sum(jnp.square(pred_xy - txy), -1) + jnp.sum(jnp.square(pred_wh - twh), -1)
    return 0.5 * weight * sq


def _darknet_box_gradient(boxes: Array, t: Array, new_coords: bool) -> Array:
    """``boxes`` (xyxy) unchanged in value, with darknet's box-delta gradient to ``t``.

    delta_yolo_box applies dL/d(x, y, w, h) of the normalised box straight to (tx, ty, tw,
    th), with only w, h multiplied by exp(tw), exp(th): no sigmoid, scale_x_y, 1/grid or
    anchor factor. Built as a straight-through estimator, so the forward value is exact.
    With ``new_coords`` no exp factor is applied (w = 4 t^2 anchor has no exp).
    """
    xywh = jax.lax.stop_gradient(box_ops.xyxy_to_xywh(boxes))
    zero = t - jax.lax.stop_gradient(t)  # value 0, gradient 1 with respect to t
    if new_coords:
        scale = jnp.ones_like(t[..., 2:])
    else:
        scale = jnp.exp(jnp.minimum(jax.lax.stop_gradient(t[..., 2:]), MAX_LOG_SCALE))
    xywh = xywh + jnp.concatenate([zero[..., :2], scale * zero[..., 2:]], axis=-1)
    return box_ops.xywh_to_xyxy(xywh)


def _bce(x: Array, y: Array, *, from_logits: bool) -> Array:
    """Elementwise binary cross-entropy of logits (or of probabilities) against ``y``."""
    if from_logits:
        # log(1 + exp(x)) - x*y, stable for large |x|.
        return jax.nn.softplus(x) - x * y
    p = jnp.clip(x, _PROB_EPS, 1.0 - _PROB_EPS)
    return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _clip_gradient(x: Array, bound: float) -> Array:
    """Identity whose gradient is clipped elementwise to ``[-bound, bound]``."""
    return x


def _clip_gradient_fwd(x: Array, bound: float) -> tuple[Array, None]:
    return x, None


def _clip_gradient_bwd(bound: float, _, g: Array) -> tuple[Array]:
    return (jnp.clip(g, -bound, bound),)


_clip_gradient.defvjp(_clip_gradient_fwd, _clip_gradient_bwd)


def smooth_class_targets(target: Array, eps: float) -> Array:
    """The classifier's label smoothing (darknet data.c::fill_truth_smooth).

    Each class keeps ``1 - eps`` of its target and gets ``eps / (K - 1)`` of the rest:
    ``y * (1 - eps) + (1 - y) * eps / (K - 1)``; a one-hot row becomes ``1 - eps`` for the
    true class and ``eps / (K - 1)`` for each other. Rows that sum to one (mixed labels
    from CutMix or Mosaic included) still sum to one. The detector's BCE uses ``eps / 2``.
    """
    k = target.shape[-1]
    if eps == 0 or k < 2:
        return target
    return target * (1.0 - eps) + (1.0 - target) * (eps / (k - 1))


def classification_loss(
    logits: Array, target: Array, label: Array, label_smoothing: float = 0.0
) -> tuple[Array, dict[str, Array]]:
    """Softmax cross-entropy against the (mixed, smoothed) label distribution.

    ``logits`` [B, K], ``target`` [B, K] rows summing to one, ``label`` int [B] (the base
    image's class). Returns the batch-mean loss and metrics ``total``, ``cls`` and ``top1``
    (the fraction of rows whose arg-max is ``label``).
    """
    logits = logits.astype(jnp.float32)
    target = smooth_class_targets(target.astype(jnp.float32), label_smoothing)
    loss = -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits), axis=-1))
    top1 = jnp.mean((jnp.argmax(logits, axis=-1) == label).astype(jnp.float32))
    return loss, {"total": loss, "cls": loss, "top1": top1}
