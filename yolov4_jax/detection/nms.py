"""Class-aware non-maximum suppression with a fixed output size, jit- and vmap-friendly.

Mirrors darknet's box.c::do_nms_sort / diounms_sort: every (box, class) pair whose
probability exceeds the threshold is a separate candidate (get_yolo_detections zeroes
the rest), candidates are visited in descending probability per class, and a visited
candidate that is still alive zeroes every later same-class candidate it overlaps too much.

Note on names: ``kind="greedy"`` is the plain-IoU test of do_nms_sort (darknet's ``default``
nms_kind, and ``greedynms`` before commit c7e3e2e). Since c7e3e2e darknet's ``greedynms``
uses the DIoU test with beta 0.6, which is ``kind="diou", beta=0.6`` here.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from yolov4_jax.detection.boxes import pairwise_diou_penalty, pairwise_iou

Array = jax.Array

_KINDS = ("greedy", "diou")


class Detections(NamedTuple):
    """Fixed-size NMS output, sorted by score descending; padding has ``valid=False``.

    Padding entries have score 0, class 0 and an all-zero box.
    """

    boxes: Array  # [N, K, 4] xyxy
    scores: Array  # [N, K]
    classes: Array  # [N, K] int32
    valid: Array  # [N, K] bool


@functools.partial(jax.jit, static_argnames=("max_detections", "kind", "pre_nms_top_k"))
def nms(
    boxes: Array,
    scores: Array,
    *,
    iou_threshold: float = 0.45,
    score_threshold: float = 0.25,
    max_detections: int = 100,
    kind: str = "greedy",
    beta: float = 0.6,
    pre_nms_top_k: int = 1000,
) -> Detections:
    """Batched class-aware NMS.

    Args:
      boxes: ``[N, M, 4]`` xyxy boxes.
      scores: ``[N, M, C]`` per-class probabilities (objectness * class probability).
      iou_threshold: a candidate is suppressed when its overlap with a higher-scoring kept
        candidate of the same class is strictly greater than this.
      score_threshold: only (box, class) pairs with score strictly greater than this are
        candidates (darknet: ``prob > thresh``).
      max_detections: K, the fixed number of output slots per image.
      kind: ``"greedy"`` (overlap = IoU) or ``"diou"`` (overlap = IoU - (rho^2/c^2)^beta,
        box.c::box_diounms).
      beta: the DIoU exponent (darknet's beta_nms); unused for ``"greedy"``.
      pre_nms_top_k: at most this many highest-scoring candidates per image enter the
        quadratic suppression step.

    Returns:
      ``Detections`` with ``[N, K]`` leading shape. The thresholds and beta are traced, so
      changing them does not recompile; ``max_detections``, ``kind`` and ``pre_nms_top_k`` are
      static.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if boxes.ndim != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, M, 4], got {boxes.shape}")
    if scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"scores must be [N, M, C] matching boxes {boxes.shape}, got {scores.shape}"
        )
    single = functools.partial(
        _nms_single, max_detections=max_detections, kind=kind, pre_nms_top_k=pre_nms_top_k
    )
    return jax.vmap(single, in_axes=(0, 0, None, None, None))(
        boxes, scores, iou_threshold, score_threshold, beta
    )


def _nms_single(
    boxes: Array,
    scores: Array,
    iou_threshold: Array,
    score_threshold: Array,
    beta: Array,
    *,
    max_detections: int,
    kind: str,
    pre_nms_top_k: int,
) -> Detections:
    """NMS for one image: ``boxes [M, 4]``, ``scores [M, C]`` -> ``Detections`` of ``[K]``."""
    num_boxes, num_classes = scores.shape
    num_cand = min(pre_nms_top_k, num_boxes * num_classes)

    # Each (box, class) pair is its own candidate, as in darknet where a box carries one
    # probability per class and do_nms_sort runs once per class.
    flat = scores.reshape(-1)  # [M*C], index = box * C + class
    flat = jnp.where(flat > score_threshold, flat, -jnp.inf)
    cand_scores, cand_idx = jax.lax.top_k(flat, num_cand)  # [P] descending, P = num_cand
    cand_alive = cand_scores > score_threshold  # [P]; -inf (below threshold) is never alive
    cand_boxes = boxes[cand_idx // num_classes]  # [P, 4] xyxy
    cand_classes = (cand_idx % num_classes).astype(jnp.int32)  # [P]

    overlap = pairwise_iou(cand_boxes, cand_boxes)  # [P, P]
    if kind == "diou":
        # penalty ** beta as exp(beta * log(penalty)): XLA:CPU's general power took twice as
        # long on these [P, P] matrices, the largest cost of NMS. 0 ** beta stays 0 (1 for
        # beta 0, as powf).
        penalty = pairwise_diou_penalty(cand_boxes, cand_boxes)
        powered = jnp.exp(beta * jnp.log(jnp.where(penalty > 0, penalty, 1.0)))
        overlap = overlap - jnp.where(penalty > 0, powered, jnp.where(beta == 0, 1.0, 0.0))
    order = jnp.arange(num_cand)
    # suppresses[i, j]: i would zero j if i is kept. Only later (lower-score) candidates of
    # the same class, as darknet compares each sorted detection with those after it.
    suppresses = (
        (overlap > iou_threshold)
        & (cand_classes[:, None] == cand_classes[None, :])
        & (order[None, :] > order[:, None])
    )  # [P, P]

    def visit(i: Array, keep: Array) -> Array:
        # A suppressed candidate suppresses nothing (do_nms_sort skips prob == 0).
        return keep & ~(suppresses[i] & keep[i])

    keep = jax.lax.fori_loop(0, num_cand, visit, cand_alive)  # [P]

    # Kept candidates are already in score order; top_k moves them ahead of the dropped ones
    # (ties keep the lower index first, so the order is stable).
    num_out = min(max_detections, num_cand)
    kept_scores = jnp.where(keep, cand_scores, -jnp.inf)
    out_scores, pick = jax.lax.top_k(kept_scores, num_out)  # [num_out]
    valid = keep[pick]
    out = Detections(
        boxes=jnp.where(valid[:, None], cand_boxes[pick], 0.0),
        scores=jnp.where(valid, out_scores, 0.0),
        classes=jnp.where(valid, cand_classes[pick], 0),
        valid=valid,
    )
    pad = max_detections - num_out
    if pad:
        # Fewer candidates than output slots: append invalid entries.
        out = Detections(
            boxes=jnp.pad(out.boxes, ((0, pad), (0, 0))),
            scores=jnp.pad(out.scores, (0, pad)),
            classes=jnp.pad(out.classes, (0, pad)),
            valid=jnp.pad(out.valid, (0, pad)),
        )
    return out
