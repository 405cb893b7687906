"""The YOLOv4 loss: box (MSE or the IoU family), objectness with the ignore rule, class BCE.

Follows darknet's yolo_layer.c::forward_yolo_layer (process_batch). The loss *value* is the
written loss below; its *gradient* at the raw head outputs is, by default, darknet's
``l.delta`` exactly (minus it, divided by the batch size), quirks included, which
tests/test_loss_darknet.py checks against a NumPy port of darknet's source. Per head:

* **Box**, once per (truth, anchor) pair that `yolov4_jax.detection.targets.assign_targets` makes
  positive (the best anchor over all heads, plus every anchor above ``iou_thresh``):
  ``iou_normalizer * (1 - IoU_kind(pred, truth))`` for ``iou|giou|diou|ciou``, or for
  ``mse`` ``0.5 * iou_normalizer * (2 - w*h) * |t_pred - t_truth|^2`` in darknet's t-space
  (tx = x*W - i against the output after the logistic and ``scale_x_y``, tw = log(w*net_w
  / anchor_w), or sqrt(w*net_w / (4*anchor_w)) with ``new_coords``). Two truths on one
  cell-anchor slot each add their term (darknet's accumulate = 1).
* **Objectness**: ``obj_normalizer * BCE(obj, 1)`` at positives and ``obj_normalizer *
  BCE(obj, 0)`` elsewhere, except that a prediction whose best IoU with any valid ground
  truth of its image exceeds ``ignore_thresh`` is ignored, if some class probability of it
  exceeds ``ignore_class_thresh`` (0.25; darknet's compare_yolo_class, which does not check
  that the class matches). With ``objectness_smooth`` such a prediction gets that IoU as its
  target instead of being ignored.
* **Class** at positives: ``BCE(cls, y)`` summed over classes, ``y`` the union of the
  slot's truths' classes with darknet's label smoothing ``y = y*(1 - eps) + eps/2``
  (delta_yolo_class).

Normalisation: darknet sums the deltas of all images of a batch and its update divides by
the batch size, so the loss here is the per-image sum (over heads, cells, anchors, classes)
averaged over the batch. With an all-False ``mask`` only the "no object" objectness term
remains: Self-Adversarial Training uses exactly that to suppress detections.

``box_gradient="darknet"`` (the default) gives the box term darknet's delta_yolo_box
delta instead of the chain rule (``"autodiff"``, the exact gradient of the value above):

* IoU family: box.c::dx_box_iou's hand-written derivative with respect to the normalised
  (x, y, w, h), reproduced with its quirks (see `yolov4_jax.detection.boxes.darknet_iou_delta`: w, h
  not halved, the DIoU/CIoU distance term's sign on x, y, CIoU's aspect term without
  1/(w^2 + h^2), the unclipped intersection). delta_yolo_box multiplies the w, h parts by
  exp(tw), exp(th) (not for new_coords) and nothing else: no logistic, ``scale_x_y``, 1/grid
  or anchor factor (backward_yolo_layer copies the deltas to the input). Then
  ``iou_normalizer``, NaN/inf set to 0 (fix_nan_inf), and each pair's delta clipped to
  ``max_delta`` before the pairs of a slot add up.
* MSE: delta_yolo_box's ``scale * (t_truth - l.output) * iou_normalizer`` lands on the raw
  output as it is, without the logistic's derivative or ``scale_x_y`` (autodiff includes
  them, 4-10x weaker on x, y). darknet does not clip it.
* With ``iou_thresh < 1``, averages_yolo_deltas divides a slot's summed box delta by the
  number of classes whose delta there is positive (only where the objectness delta is not
  0): two truths of different classes are averaged, two of one class summed.

``obj_cls_gradient="darknet"`` (the default) does the same for objectness and classes:

* new_coords heads output probabilities (the conv applied the logistic), and darknet's
  delta ``y - p`` lands on them as it is: the gradient of ``(p - y)^2 / 2``. ``"bce"``
  takes BCE on the probabilities instead, ``1 / (p (1 - p))`` times stronger.
* With ``objectness_smooth``, darknet keeps a positive's earlier objectness delta unless it
  is exactly 0 (process_batch: ``if (l.delta[obj_index] == 0)``), so a positive's target is
  the IoU above ``ignore_thresh`` it had as a negative, else 0. ``"bce"``: 1.
* ``cls_normalizer`` is unused, as darknet applies it only with ``counters_per_class``
  (delta_yolo_class); ``"bce"`` multiplies the class term by it.

For plain heads the objectness and class BCE gradient ``p - y`` is darknet's delta, so
both choices agree there. ``truth_thresh`` < 1 (disabled in every shipped cfg) is refused.
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

from yolov4_jax import ConfigError
from yolov4_jax.detection import boxes as box_ops
from yolov4_jax.detection import targets as targets_lib
from yolov4_jax.detection.decode import MAX_LOG_SCALE, decode_yolo
from yolov4_jax.models import specs

Array = jax.Array

BOX_LOSSES = ("mse", "iou", "giou", "diou", "ciou")
BOX_GRADIENTS = ("darknet", "autodiff")
OBJ_CLS_GRADIENTS = ("darknet", "bce")
SAT_GRADIENTS = ("darknet", "loss")
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
    box_gradient: str = "darknet"  # darknet | autodiff: the box term's gradient at tx..th
    obj_cls_gradient: str = "darknet"  # darknet | bce: objectness and class deltas
    sat_gradient: str = "darknet"  # darknet | loss: what SAT's first stage descends (sat.py)

    def __post_init__(self):
        choices = {
            "box_gradient": BOX_GRADIENTS,
            "obj_cls_gradient": OBJ_CLS_GRADIENTS,
            "sat_gradient": SAT_GRADIENTS,
            "box_loss": (None, *BOX_LOSSES),
        }
        for field, allowed in choices.items():
            value = getattr(self, field)
            if value not in allowed:
                shown = tuple(a for a in allowed if a is not None)
                raise ConfigError(f"config.loss.{field}={value!r}: expected one of {shown}")

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
    counts = {
        k: jnp.zeros((), jnp.float32) for k in ("pos", "pairs", "ignored", "collisions", "iou")
    }
    for raw, head, target in zip(outputs, heads, head_targets, strict=True):
        terms = _head_loss(
            jnp.asarray(raw, jnp.float32), head, target, gt_boxes, gt_valid, image_hw, options
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
    metrics["mean_iou"] = counts["iou"] / jnp.maximum(counts["pairs"], 1.0)
    return total, metrics


def _head_loss(
    raw: Array,
    head: specs.Yolo,
    target: targets_lib.HeadTargets,
    gt_boxes: Array,
    gt_valid: Array,
    image_hw: tuple[int, int],
    options: LossOptions,
) -> dict[str, Array]:
    """Batch sums of one head's loss terms and counts (see the module docstring)."""
    batch, grid_h, grid_w, _ = raw.shape
    num_anchors, num_classes = len(head.mask), head.classes
    net_wh = np.asarray([image_hw[1], image_hw[0]], np.float32)
    anchors_px = np.asarray(head.head_anchors, np.float32)  # [A, 2]
    grid = (batch, grid_h, grid_w, num_anchors)
    out = raw.reshape(*grid, 5 + num_classes)
    positive = target.object_mask  # [B, H, W, A]
    pos_f = positive.astype(jnp.float32)
    darknet_scores = options.obj_cls_gradient == "darknet"

    # forward_yolo_layer's activations: the logistic on x, y, objectness and classes (the
    # conv already applied it for new_coords heads).
    if head.new_coords:
        obj_p, cls_p = out[..., 4], out[..., 5:]
    else:
        obj_p, cls_p = jax.nn.sigmoid(out[..., 4]), jax.nn.sigmoid(out[..., 5:])

    # Ignore rule: best IoU of each (detached) prediction with any valid truth of its image,
    # counted only if some class probability exceeds .25 (compare_yolo_class).
    pred_boxes, _, _ = decode_yolo(
        jax.lax.stop_gradient(raw),
        anchors=anchors_px / net_wh,
        num_classes=num_classes,
        scale_x_y=head.scale_x_y,
        new_coords=head.new_coords,
    )  # [B, P, 4] xyxy
    ious = box_ops.iou(pred_boxes[:, :, None, :], gt_boxes[:, None, :, :])  # [B, P, M]
    best_iou = jnp.max(jnp.where(gt_valid[:, None, :], ious, 0.0), axis=-1, initial=0.0)
    best_iou = best_iou.reshape(grid)
    class_ok = jnp.any(jax.lax.stop_gradient(cls_p) > options.ignore_class_thresh, axis=-1)
    above = (best_iou > head.ignore_thresh) & class_ok

    # Objectness targets and weights, as process_batch writes l.delta[obj_index].
    p_obj = jax.lax.stop_gradient(obj_p)
    if head.objectness_smooth:
        # Above ignore_thresh the target becomes the IoU instead of being ignored.
        before = jnp.where(above, best_iou, 0.0)
        if darknet_scores:
            # process_batch keeps a positive's earlier delta unless it is exactly 0
            # ("if (l.delta[obj_index] == 0)"), so a positive keeps the target it had as a
            # negative (the IoU above ignore_thresh, else 0). Reproduced on purpose.
            obj_target = jnp.where(positive & (before == p_obj), 1.0, before)
        else:
            obj_target = jnp.where(positive, 1.0, before)
        obj_weight = jnp.ones(grid, jnp.float32)
        ignored = jnp.zeros(grid, bool)
    else:
        ignored = above & ~positive
        obj_target = pos_f
        obj_weight = jnp.where(ignored, 0.0, 1.0)
    obj_terms = _score_loss(out[..., 4], obj_target, head.new_coords, darknet_scores)
    obj_sum = head.obj_normalizer * jnp.sum(obj_weight * obj_terms)
    obj_delta = head.obj_normalizer * obj_weight * (obj_target - p_obj)  # darknet's l.delta

    # Class term at positives, darknet's label smoothing (delta_yolo_class). darknet applies
    # cls_normalizer only with counters_per_class (delta_yolo_class), which no cfg here uses.
    eps = head.label_smooth_eps
    cls_target = target.classes * (1.0 - eps) + 0.5 * eps
    cls_terms = _score_loss(out[..., 5:], cls_target, head.new_coords, darknet_scores)
    cls_weight = 1.0 if darknet_scores else head.cls_normalizer
    cls_sum = cls_weight * jnp.sum(pos_f[..., None] * cls_terms)

    # Box term: one delta_yolo_box call per (truth, anchor) pair; collisions add up.
    flat = out.reshape(batch, grid_h * grid_w, num_anchors, 5 + num_classes)
    rows = jnp.arange(batch)[:, None]
    pair_t = flat[rows, target.truth_cell][..., :4]  # [B, M, A, 4] raw tx, ty, tw, th
    pair_on = target.truth_positive  # [B, M, A]
    truth = box_ops.xyxy_to_xywh(gt_boxes)[:, :, None, :]  # [B, M, 1, 4]
    cell = jnp.stack([target.truth_cell % grid_w, target.truth_cell // grid_w], -1)
    cell = cell.astype(jnp.float32)[:, :, None, :]  # [B, M, 1, 2] (col, row)
    geometry = _PairGeometry(head, anchors_px, net_wh, (grid_w, grid_h), cell, truth)
    if options.box_gradient == "darknet":
        delta = geometry.darknet_delta(jax.lax.stop_gradient(pair_t))
        delta = jnp.where(pair_on[..., None], delta, 0.0)
        slot_delta = (
            jnp.zeros((batch, grid_h * grid_w, num_anchors, 4), jnp.float32)
            .at[rows, target.truth_cell]
            .add(delta)
            .reshape(*grid, 4)
        )
        if head.iou_thresh < 1.0:
            # averages_yolo_deltas: where the objectness delta is non-zero, the box delta is
            # divided by the number of classes whose delta is positive. Two truths of one
            # class on a slot are therefore summed, of two classes averaged (darknet's rule).
            cls_delta = pos_f[..., None] * (cls_target - jax.lax.stop_gradient(cls_p))
            n_cls = jnp.sum((cls_delta > 0).astype(jnp.float32), axis=-1)
            divide = (obj_delta != 0) & (n_cls > 0)
            slot_delta = slot_delta / jnp.where(divide, n_cls, 1.0)[..., None]
        values = geometry.loss(jax.lax.stop_gradient(pair_t))
        box_t = out[..., :4]
        # The loss value stays the written loss; its gradient at tx..th is -delta.
        box_sum = jnp.sum(jnp.where(pair_on, values, 0.0)) + jnp.sum(
            jax.lax.stop_gradient(-slot_delta) * (box_t - jax.lax.stop_gradient(box_t))
        )
    else:
        if head.iou_loss != "mse" and math.isfinite(head.max_delta):
            # darknet clips each call's delta to max_delta: per pair, per image (hence / B).
            pair_t = _clip_gradient(pair_t, head.max_delta / batch)
        box_sum = jnp.sum(jnp.where(pair_on, geometry.loss(pair_t), 0.0))
    pair_iou = box_ops.iou(
        box_ops.xywh_to_xyxy(geometry.pred_xywh(jax.lax.stop_gradient(pair_t))),
        box_ops.xywh_to_xyxy(truth),
    )

    return {
        "box": box_sum,
        "obj": obj_sum,
        "cls": cls_sum,
        "pos": jnp.sum(pos_f),
        "pairs": jnp.sum(pair_on.astype(jnp.float32)),
        "ignored": jnp.sum(ignored.astype(jnp.float32)),
        "collisions": jnp.sum(jnp.maximum(target.num_assigned - 1, 0)).astype(jnp.float32),
        "iou": jnp.sum(jnp.where(pair_on, pair_iou, 0.0)),
    }


class _PairGeometry:
    """The box of each (truth, anchor) pair's prediction, its loss and darknet's delta.

    Built per head from static values: ``anchors_px [A, 2]``, ``net_wh`` and ``grid_wh``
    (``(W, H)``), and the pairs' ``cell [B, M, 1, 2]`` (col, row) and ``truth [B, M, 1, 4]``
    xywh. Functions take the pairs' raw ``t [B, M, A, 4]``.
    """

    def __init__(self, head, anchors_px, net_wh, grid_wh, cell, truth):
        self.head = head
        self.anchors = jnp.asarray(anchors_px / net_wh)  # [A, 2] normalised
        self.grid_wh = jnp.asarray(grid_wh, jnp.float32)
        self.cell, self.truth = cell, truth
        self.anchors_px, self.net_wh = anchors_px, net_wh

    def offsets(self, t: Array) -> Array:
        """l.output's x, y: the logistic (not for new_coords), then scale_x_y's scal_add."""
        s = self.head.scale_x_y
        xy = t[..., :2] if self.head.new_coords else jax.nn.sigmoid(t[..., :2])
        return s * xy - 0.5 * (s - 1.0)

    def pred_xywh(self, t: Array, cap: bool = True) -> Array:
        """get_yolo_box of the pairs' predictions, ``[B, M, A, 4]`` normalised xywh."""
        centre = (self.cell + self.offsets(t)) / self.grid_wh
        if self.head.new_coords:
            scale = 4.0 * jnp.square(t[..., 2:])
        else:
            scale = jnp.exp(jnp.minimum(t[..., 2:], MAX_LOG_SCALE) if cap else t[..., 2:])
        return jnp.concatenate([centre, scale * self.anchors], axis=-1)

    def mse_targets(self) -> Array:
        """delta_yolo_box's MSE targets (tx, ty, tw, th), ``[B, M, A, 4]``."""
        txy = self.truth[..., :2] * self.grid_wh - self.cell  # truth.x * lw - i
        wh = jnp.maximum(self.truth[..., 2:], 1e-9)  # no log(0) where the pair is off
        ratio = wh * jnp.asarray(self.net_wh) / jnp.asarray(self.anchors_px)
        twh = jnp.sqrt(ratio / 4.0) if self.head.new_coords else jnp.log(ratio)
        return jnp.concatenate([jnp.broadcast_to(txy, twh.shape), twh], axis=-1)

    def mse_scale(self) -> Array:
        """``iou_normalizer * (2 - truth.w * truth.h)``, ``[B, M, 1]``."""
        return self.head.iou_normalizer * (2.0 - self.truth[..., 2] * self.truth[..., 3])

    def loss(self, t: Array) -> Array:
        """The written box loss of each pair, ``[B, M, A]``."""
        head = self.head
        if head.iou_loss == "mse":
            # 0.5 * scale * |t - target|^2 on l.output's values: its gradient at them is
            # delta_yolo_box's MSE delta.
            pred = jnp.concatenate([self.offsets(t), t[..., 2:]], axis=-1)
            sq = jnp.sum(jnp.square(pred - self.mse_targets()), axis=-1)
            return 0.5 * self.mse_scale() * sq
        similarity = _IOU_FUNCTIONS[head.iou_loss](
            box_ops.xywh_to_xyxy(self.pred_xywh(t)), box_ops.xywh_to_xyxy(self.truth)
        )
        return head.iou_normalizer * (1.0 - similarity)

    def darknet_delta(self, t: Array) -> Array:
        """delta_yolo_box's delta for each pair, ``[B, M, A, 4]`` (minus the gradient at t).

        The MSE delta is applied to l.output's values as if they were the raw outputs
        (darknet's backward copies the delta without the logistic's derivative or
        scale_x_y). The IoU family: box.c::dx_box_iou, w, h multiplied by exp(tw), exp(th)
        (not for new_coords), times iou_normalizer, NaN and inf set to 0 (fix_nan_inf),
        clipped to max_delta.
        """
        head = self.head
        if head.iou_loss == "mse":
            pred = jnp.concatenate([self.offsets(t), t[..., 2:]], axis=-1)
            return self.mse_scale()[..., None] * (self.mse_targets() - pred)
        pred = self.pred_xywh(t, cap=False)
        # delta_yolo_box: "avoid nan in dx_box_iou".
        pred = pred.at[..., 2:].set(jnp.where(pred[..., 2:] == 0, 1.0, pred[..., 2:]))
        truth = jnp.broadcast_to(self.truth, pred.shape)
        delta = box_ops.darknet_iou_delta(pred, truth, head.iou_loss)
        if not head.new_coords:
            delta = delta.at[..., 2:].multiply(jnp.exp(t[..., 2:]))
        delta = delta * head.iou_normalizer
        delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
        if math.isfinite(head.max_delta):
            delta = jnp.clip(delta, -head.max_delta, head.max_delta)
        return delta


def _score_loss(x: Array, y: Array, new_coords: bool, darknet: bool) -> Array:
    """Objectness or class loss of outputs ``x`` against targets ``y`` (targets detached).

    Plain heads: BCE of the logits, whose gradient ``p - y`` is darknet's delta. new_coords
    heads output probabilities: darknet's delta ``y - p`` is applied to them directly, which
    is the gradient of ``(p - y)^2 / 2``; ``darknet=False`` takes BCE on the probabilities
    instead (gradient ``(p - y) / (p (1 - p))``).
    """
    y = jax.lax.stop_gradient(y)
    if not new_coords:
        return _bce(x, y, from_logits=True)
    if darknet:
        return 0.5 * jnp.square(x - y)
    return _bce(x, y, from_logits=False)


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
