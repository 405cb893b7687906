"""Darknet's target assignment: which head, cell and anchor predicts each ground-truth box.

Follows yolo_layer.c::forward_yolo_layer (the loop over truths, "process_batch" in the
reference notes):

* The cell of a box is ``(floor(cx * W), floor(cy * H))`` on each head's grid.
* The best anchor is the argmax over **all** anchors (every head's) of the IoU between the
  box's size and the anchor's size, both centred at the origin, the anchor divided by the
  network input size. The box is positive only on the head whose ``mask`` holds that anchor
  (an anchor in no mask, like anchor 0 of yolov4-tiny, leaves the box without a positive).
  Ties go to the lower anchor index (darknet's strict ``>`` scan).
* With ``iou_thresh < 1`` (0.213 in yolov4.cfg), every *other* anchor of any head whose
  shape IoU (of the head's ``iou_thresh_kind``) exceeds the head's ``iou_thresh`` is positive
  too, in that head's cell of the box. A box can thus be positive on several heads.

Deliberate differences, all for static shapes and determinism under ``jax.jit``:

* Validity comes from the batch ``mask`` (padding rows); darknet stops at the first truth
  with ``x == 0`` instead. Boxes with zero or negative width or height and labels outside
  ``[0, classes)`` are ignored (darknet's loader drops boxes under a pixel and its layer skips
  unknown class ids).
* Cell indices are clipped to the grid, so a centre at exactly 1.0 lands in the last cell
  (darknet would index out of bounds).
* **Collisions** (several boxes on one cell and anchor): ``truth_positive`` and
  ``truth_cell`` keep every (truth, anchor) pair, and the loss adds up their box terms as
  darknet's delta_yolo_box accumulates (`yolov4_jax.detection.losses`). The slot-level ``box`` comes
  from the box with the highest index in the batch row (the later truth), and the class
  target is the union of the colliding boxes' classes, which is what AlexeyAB's
  ``delta_yolo_class`` produces (a second box of another class sets its class to 1 without
  clearing the first). ``num_assigned`` records the count. Both rules are
  order-independent reductions (scatter-max), so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from yolov4_jax.detection import boxes as box_ops
from yolov4_jax.models import specs

Array = jax.Array

# Box-vs-anchor similarity for darknet's iou_thresh_kind (box.c::box_iou_kind).
_SHAPE_IOU_KINDS = {
    "iou": box_ops.iou,
    "giou": box_ops.giou,
    "diou": box_ops.diou,
    "ciou": box_ops.ciou,
}


class HeadTargets(NamedTuple):
    """Targets of one head on its ``[B, H, W, A]`` grid of predictions (A: the head's anchors)."""

    object_mask: Array  # [B, H, W, A] bool: some ground truth is assigned here
    box: Array  # [B, H, W, A, 4] xyxy in [0, 1] of the canvas (0 where no object)
    classes: Array  # [B, H, W, A, C] float32 0/1: union of the assigned boxes' classes
    gt_index: Array  # [B, H, W, A] int32: row of `boxes` giving `box`, -1 where no object
    num_assigned: Array  # [B, H, W, A] int32: boxes assigned here (> 1 is a collision)
    # The same assignment per ground truth, as darknet's loop over truths sees it: each
    # (truth, anchor) pair is one call of delta_yolo_box, whose deltas add up at the slot.
    truth_positive: Array  # [B, M, A] bool: truth m is assigned to anchor a of this head
    truth_cell: Array  # [B, M] int32: row * W + col of truth m's cell on this head's grid


def valid_boxes(boxes: Array, labels: Array, mask: Array, num_classes: int) -> Array:
    """``[B, M]`` bool: rows that take part in the loss (mask, positive size, known class)."""
    size = boxes[..., 2:] - boxes[..., :2]  # [B, M, 2]
    return (
        jnp.asarray(mask, bool)
        & jnp.all(size > 0.0, axis=-1)
        & (labels >= 0)
        & (labels < num_classes)
    )


def shape_iou(box_wh: Array, anchor_wh: Array, kind: str = "iou") -> Array:
    """IoU-family similarity of sizes, both boxes centred at the origin: ``[...]``.

    ``box_wh [..., 2]`` and ``anchor_wh [..., 2]`` broadcast and share units (darknet:
    box size normalised by the canvas, anchor divided by the network size).
    """
    fn = _SHAPE_IOU_KINDS[kind]
    box_wh, anchor_wh = jnp.asarray(box_wh), jnp.asarray(anchor_wh, dtype=box_wh.dtype)
    return fn(
        jnp.concatenate([-0.5 * box_wh, 0.5 * box_wh], axis=-1),
        jnp.concatenate([-0.5 * anchor_wh, 0.5 * anchor_wh], axis=-1),
    )


def assign_targets(
    boxes: Array,
    labels: Array,
    mask: Array,
    heads: Sequence[specs.Yolo],
    grid_sizes: Sequence[tuple[int, int]],
    image_hw: tuple[int, int],
) -> tuple[HeadTargets, ...]:
    """Assigns ground-truth boxes to the predictions of every head (darknet's rule).

    Args:
      boxes: ``[B, M, 4]`` float xyxy, normalised to [0, 1] of the network canvas.
      labels: ``[B, M]`` int class ids.
      mask: ``[B, M]`` bool, False on padding rows.
      heads: the network's ``Yolo`` specs in output order. They must share ``anchors``
        (all ``num`` anchors, pixels) and ``classes``; ``iou_thresh`` and
        ``iou_thresh_kind`` are read per head.
      grid_sizes: ``(H, W)`` of each head's output grid.
      image_hw: ``(height, width)`` of the canvas in pixels (the images' static shape).

    Returns:
      One `HeadTargets` per head. Shapes depend only on the static arguments, so this is
      jit-safe; changing the canvas size retraces.
    """
    heads = tuple(heads)
    if len(heads) != len(grid_sizes):
        raise ValueError(f"{len(heads)} heads but {len(grid_sizes)} grid sizes")
    _check_heads(heads)
    num_classes = heads[0].classes
    boxes = jnp.asarray(boxes, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    batch, num_boxes = labels.shape
    img_h, img_w = image_hw

    # Darknet divides the anchors by the network size (forward_yolo_layer: biases / net.w).
    anchors = np.asarray(heads[0].anchors, np.float32) / np.asarray([img_w, img_h], np.float32)
    xywh = box_ops.xyxy_to_xywh(boxes)  # [B, M, 4]
    centre, size = xywh[..., :2], xywh[..., 2:]
    valid = valid_boxes(boxes, labels, mask, num_classes)  # [B, M]
    # Best anchor over all heads by plain IoU of the sizes (box_iou in forward_yolo_layer).
    best = jnp.argmax(shape_iou(size[:, :, None, :], anchors), axis=-1)  # [B, M]
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)  # [B, M, C]
    order = jnp.arange(1, num_boxes + 1, dtype=jnp.int32)  # later truths rank higher

    targets = []
    for head, (grid_h, grid_w) in zip(heads, grid_sizes, strict=True):
        head_ids = np.asarray(head.mask, np.int32)  # [A]
        num_anchors = len(head_ids)
        positive = best[..., None] == head_ids  # [B, M, A]
        if head.iou_thresh < 1.0:
            # yolo_layer.c: "if (mask_n >= 0 && n != best_n && l.iou_thresh < 1.0f)".
            similarity = shape_iou(size[:, :, None, :], anchors[head_ids], head.iou_thresh_kind)
            positive = positive | (similarity > head.iou_thresh)
        positive = positive & valid[..., None]

        # Cell of the centre: darknet's int cast of truth.x * l.w, clipped to the grid.
        col = jnp.clip(jnp.floor(centre[..., 0] * grid_w), 0, grid_w - 1).astype(jnp.int32)
        row = jnp.clip(jnp.floor(centre[..., 1] * grid_h), 0, grid_h - 1).astype(jnp.int32)
        slots_per_image = grid_h * grid_w * num_anchors
        slot = ((row * grid_w + col) * num_anchors)[..., None] + jnp.arange(num_anchors)
        flat = (jnp.arange(batch)[:, None, None] * slots_per_image + slot).reshape(-1)

        total = batch * slots_per_image
        winner = (
            jnp.zeros(total, jnp.int32)
            .at[flat]
            .max(jnp.where(positive, order[None, :, None], 0).reshape(-1))
        )
        count = jnp.zeros(total, jnp.int32).at[flat].add(positive.astype(jnp.int32).reshape(-1))
        classes = (
            jnp.zeros((total, num_classes), jnp.float32)
            .at[flat]
            .max(
                jnp.where(positive[..., None], one_hot[:, :, None, :], 0.0).reshape(-1, num_classes)
            )
        )

        grid = (batch, grid_h, grid_w, num_anchors)
        gt_index = winner.reshape(grid) - 1
        object_mask = gt_index >= 0
        box = jnp.take_along_axis(
            boxes, jnp.maximum(gt_index, 0).reshape(batch, -1, 1), axis=1
        ).reshape(*grid, 4)
        targets.append(
            HeadTargets(
                object_mask=object_mask,
                box=jnp.where(object_mask[..., None], box, 0.0),
                classes=classes.reshape(*grid, num_classes),
                gt_index=gt_index,
                num_assigned=count.reshape(grid),
                truth_positive=positive,
                truth_cell=row * grid_w + col,
            )
        )
    return tuple(targets)


def _check_heads(heads: tuple[specs.Yolo, ...]) -> None:
    if not heads:
        raise ValueError("no Yolo heads")
    first = heads[0]
    for head in heads[1:]:
        if head.anchors != first.anchors or head.classes != first.classes:
            raise ValueError("all Yolo heads must share `anchors` and `classes`")
    for head in heads:
        if head.iou_thresh_kind not in _SHAPE_IOU_KINDS:
            raise ValueError(
                f"iou_thresh_kind {head.iou_thresh_kind!r} is not one of {tuple(_SHAPE_IOU_KINDS)}"
            )
        if any(m < 0 or m >= first.num for m in head.mask):
            raise ValueError(f"mask {head.mask} indexes outside the {first.num} anchors")
