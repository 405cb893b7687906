"""Box conversions and the IoU family (IoU, GIoU, DIoU, CIoU) used by the loss and NMS.

Boxes are ``(x1, y1, x2, y2)`` corner boxes (``xyxy``) unless a name says ``xywh``
(centre x, centre y, width, height). All functions are elementwise over broadcastable
leading dimensions, jit- and grad-safe, and return finite values with finite gradients
for identical, disjoint, nested and zero-area boxes.

Darknet computes these in box.c (box_iou, box_giou, box_diou, box_ciou) and
differentiates them by hand (box.c::dx_box_iou); here autodiff does the work, so every
division is guarded with the double-``jnp.where`` trick: the unsafe branch is fed a
harmless denominator so that neither its value nor its gradient can become NaN.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# Denominators at or below this are treated as zero. Boxes are in normalised image units,
# so 1e-12 (area or squared length) is far below a pixel at any realistic input size.
_EPS = 1e-12


def xywh_to_xyxy(boxes: Array) -> Array:
    """Converts ``[..., 4]`` (cx, cy, w, h) boxes to (x1, y1, x2, y2)."""
    boxes = _as_float(boxes)
    centre, size = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([centre - 0.5 * size, centre + 0.5 * size], axis=-1)


def xyxy_to_xywh(boxes: Array) -> Array:
    """Converts ``[..., 4]`` (x1, y1, x2, y2) boxes to (cx, cy, w, h)."""
    boxes = _as_float(boxes)
    lo, hi = boxes[..., :2], boxes[..., 2:]
    return jnp.concatenate([0.5 * (lo + hi), hi - lo], axis=-1)


def iou(a: Array, b: Array) -> Array:
    """Intersection over union of ``[..., 4]`` xyxy boxes, shape ``[...]``.

    Returns 0 when the union is empty (two zero-area boxes), as darknet's box_iou does.
    """
    return _geometry(a, b).iou


def giou(a: Array, b: Array) -> Array:
    """Generalised IoU: ``iou - (C - U) / C`` with C the enclosing box's area (box.c::box_giou).

    In ``[-1, 1]``; the penalty is 0 when the enclosing box is empty.
    """
    g = _geometry(a, b)
    enclose_area = g.enclose_w * g.enclose_h
    return g.iou - _safe_div(enclose_area - g.union, enclose_area)


def diou(a: Array, b: Array) -> Array:
    """Distance IoU: ``iou - rho^2 / c^2`` (box.c::box_diou).

    rho is the distance between the box centres and c the diagonal of the enclosing box.
    """
    g = _geometry(a, b)
    return g.iou - g.distance_ratio


def ciou(a: Array, b: Array) -> Array:
    """Complete IoU: ``diou - alpha * v`` (box.c::box_ciou).

    ``v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2`` measures aspect-ratio
    disagreement and ``alpha = v / (1 - iou + v)``. As in darknet (and the CIoU paper),
    alpha is a constant under differentiation: ``jax.lax.stop_gradient``. The function is
    symmetric in ``a`` and ``b``.
    """
    g = _geometry(a, b)
    v = (4.0 / math.pi**2) * jnp.square(_aspect_angle(g.size_b) - _aspect_angle(g.size_a))
    alpha = jax.lax.stop_gradient(_safe_div(v, 1.0 - g.iou + v))
    return g.iou - g.distance_ratio - alpha * v


def diou_penalty(a: Array, b: Array) -> Array:
    """The DIoU distance term ``rho^2 / c^2`` of ``[..., 4]`` xyxy boxes, shape ``[...]``.

    0 when the enclosing box is a single point, matching box.c::box_diounms (c == 0).
    """
    return _geometry(a, b).distance_ratio


def pairwise_iou(a: Array, b: Array) -> Array:
    """IoU of every box in ``a [N, 4]`` with every box in ``b [M, 4]``: ``[N, M]``."""
    return iou(a[:, None, :], b[None, :, :])


def pairwise_diou_penalty(a: Array, b: Array) -> Array:
    """``rho^2 / c^2`` of every box in ``a [N, 4]`` with every box in ``b [M, 4]``: ``[N, M]``."""
    return diou_penalty(a[:, None, :], b[None, :, :])


class _Geometry(NamedTuple):
    """Quantities shared by the IoU family, all broadcast to the common ``[...]`` shape."""

    size_a: Array  # [..., 2] (w, h) of a, clipped at 0
    size_b: Array  # [..., 2] (w, h) of b, clipped at 0
    union: Array  # [...]
    iou: Array  # [...]
    enclose_w: Array  # [...]
    enclose_h: Array  # [...]
    distance_ratio: Array  # [...] rho^2 / c^2


def _geometry(a: Array, b: Array) -> _Geometry:
    a, b = _as_float(a), _as_float(b)
    # Inverted boxes (x2 < x1) count as empty rather than as negative area.
    size_a = jnp.maximum(a[..., 2:] - a[..., :2], 0.0)  # [..., 2]
    size_b = jnp.maximum(b[..., 2:] - b[..., :2], 0.0)  # [..., 2]
    inter_wh = jnp.maximum(
        jnp.minimum(a[..., 2:], b[..., 2:]) - jnp.maximum(a[..., :2], b[..., :2]), 0.0
    )  # [..., 2]
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    union = size_a[..., 0] * size_a[..., 1] + size_b[..., 0] * size_b[..., 1] - inter
    enclose_wh = jnp.maximum(a[..., 2:], b[..., 2:]) - jnp.minimum(a[..., :2], b[..., :2])
    centre_delta = 0.5 * ((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:]))  # [..., 2]
    # x^2 + y^2 written out, not as a sum over the last axis: XLA:CPU hands such reductions
    # to YNNPACK (`import yolov4_jax`), which is slow for length-2 rows (NMS's [1000, 1000]
    # DIoU matrices took 93 of 188 ms at batch 8).
    rho2 = jnp.square(centre_delta[..., 0]) + jnp.square(centre_delta[..., 1])
    c2 = jnp.square(enclose_wh[..., 0]) + jnp.square(enclose_wh[..., 1])
    return _Geometry(
        size_a=size_a,
        size_b=size_b,
        union=union,
        iou=_safe_div(inter, union),
        enclose_w=enclose_wh[..., 0],
        enclose_h=enclose_wh[..., 1],
        distance_ratio=_safe_div(rho2, c2),
    )


def _aspect_angle(size: Array) -> Array:
    """``atan(w / h)`` for ``[..., 2]`` (w, h) >= 0, shape ``[...]``.

    Written as ``atan2(w, h)``, which equals ``atan(w / h)`` for non-negative sizes and is
    pi/2 rather than a division by zero when h == 0. A point box (w == h == 0) gets angle 0
    with zero gradient, since atan2's gradient is 0/0 there.
    """
    w, h = size[..., 0], size[..., 1]
    ok = (w + h) > _EPS
    return jnp.where(ok, jnp.arctan2(jnp.where(ok, w, 1.0), jnp.where(ok, h, 1.0)), 0.0)


def _safe_div(num: Array, den: Array) -> Array:
    """``num / den``, or 0 where ``den <= _EPS``, with finite gradients on both branches."""
    ok = den > _EPS
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def _as_float(x: Array) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def darknet_iou_delta(pred: Array, truth: Array, kind: str) -> Array:
    """darknet's hand-written IoU-family "gradient" of ``[..., 4]`` xywh boxes (box.c::dx_box_iou).

    Returns ``[..., 4]``: darknet's ``(dx, dy, dw, dh)``, the direction that *raises* the
    IoU of ``kind`` (iou | giou | diou | ciou), exactly as box.c computes it, quirks
    included (each is the C code's behaviour, kept on purpose because darknet trains with it):

    * dw, dh are the sums ``dr - dl`` and ``db - dt`` of the edge derivatives, not halved
      ("For dw and dh, we do not divided by 2").
    * The intersection ``Iw * Ih`` is not clipped at zero, so two boxes apart on both axes
      have a positive "intersection" in the IoU part.
    * DIoU/CIoU: the distance term on x, y is ``(2 (x_t - x_p) C - 2 Cw dCw/dx S) / C^2``
      (box.c's enclosing-box term has the opposite sign on x, y from the true derivative of
      ``-rho^2/c^2``); with no overlap (``Iw <= 0 or Ih <= 0``) the distance term replaces
      the IoU part instead of adding to it (GIoU likewise with its area term).
    * CIoU's aspect term is ``alpha * 8/pi^2 (atan(w_t/h_t) - atan(w_p/h_p)) * (h_p, -w_p)``,
      without the true derivative's ``1 / (w_p^2 + h_p^2)``.

    Not differentiable (used as a value under ``stop_gradient``): divisions follow the C
    code, so a zero denominator gives inf or NaN, which the caller zeroes as darknet's
    fix_nan_inf does. ``pred``'s zero widths and heights must already be replaced by 1
    (delta_yolo_box does that before calling dx_box_iou).
    """
    px, py, pw, ph = (pred[..., k] for k in range(4))
    tx, ty, tw, th = (truth[..., k] for k in range(4))
    # to_tblr, then min/max so an inverted box still has t <= b, l <= r.
    pt0, pb0, pl0, pr0 = py - ph / 2, py + ph / 2, px - pw / 2, px + pw / 2
    pt, pb = jnp.minimum(pt0, pb0), jnp.maximum(pt0, pb0)
    pl, pr = jnp.minimum(pl0, pr0), jnp.maximum(pl0, pr0)
    tt, tb, tl, tr = ty - th / 2, ty + th / 2, tx - tw / 2, tx + tw / 2

    area = (pb - pt) * (pr - pl)
    area_t = (tb - tt) * (tr - tl)
    ih = jnp.minimum(pb, tb) - jnp.maximum(pt, tt)
    iw = jnp.minimum(pr, tr) - jnp.maximum(pl, tl)
    inter = iw * ih  # not clipped at 0 (box.c)
    union = area + area_t - inter
    dist2 = (px - tx) ** 2 + (py - ty) ** 2
    cw_g = jnp.maximum(pr, tr) - jnp.minimum(pl, tl)
    ch_g = jnp.maximum(pb, tb) - jnp.minimum(pt, tt)
    area_c = cw_g * ch_g

    d_area = {"t": -(pr - pl), "b": pr - pl, "l": -(pb - pt), "r": pb - pt}
    d_inter = {
        "t": jnp.where(pt > tt, -iw, 0.0),
        "b": jnp.where(pb < tb, iw, 0.0),
        "l": jnp.where(pl > tl, -ih, 0.0),
        "r": jnp.where(pr < tr, ih, 0.0),
    }
    d_union = {k: d_area[k] - d_inter[k] for k in d_area}
    d_enclose = {
        "t": jnp.where(pt < tt, -cw_g, 0.0),
        "b": jnp.where(pb > tb, cw_g, 0.0),
        "l": jnp.where(pl < tl, -ch_g, 0.0),
        "r": jnp.where(pr > tr, ch_g, 0.0),
    }
    grad = {
        k: jnp.where(union > 0, (union * d_inter[k] - inter * d_union[k]) / (union * union), 0.0)
        for k in d_area
    }
    # "apply grad from prediction min/max for correct corner selection": box.c assigns
    # p_dt first and p_db from the new p_dt, so an inverted box gets p_db on both sides.
    grad["t"] = jnp.where(pt0 < pb0, grad["t"], grad["b"])
    grad["l"] = jnp.where(pl0 < pr0, grad["l"], grad["r"])
    apart = (iw <= 0) | (ih <= 0)
    if kind == "giou":
        for k in grad:
            term = (area_c * d_union[k] - union * d_enclose[k]) / (area_c * area_c)
            grad[k] = jnp.where(apart, term, jnp.where(area_c > 0, grad[k] + term, grad[k]))

    dx, dy = grad["l"] + grad["r"], grad["t"] + grad["b"]
    dw, dh = grad["r"] - grad["l"], grad["b"] - grad["t"]
    if kind in ("diou", "ciou"):
        # The enclosing box of the xywh boxes and its derivatives (box.c's dC*_d*).
        cw = jnp.maximum(px + pw / 2, tx + tw / 2) - jnp.minimum(px - pw / 2, tx - tw / 2)
        ch = jnp.maximum(py + ph / 2, ty + th / 2) - jnp.minimum(py - ph / 2, ty - th / 2)
        c2 = cw * cw + ch * ch
        left, right = (pl < tl).astype(pred.dtype), (pr > tr).astype(pred.dtype)
        top, bottom = (pt < tt).astype(pred.dtype), (pb > tb).astype(pred.dtype)
        dcw_dx, dcw_dw = right - left, 0.5 * right + 0.5 * left
        dch_dy, dch_dh = bottom - top, 0.5 * bottom + 0.5 * top
        c4 = c2 * c2
        term_x = (2 * (tx - px) * c2 - 2 * cw * dcw_dx * dist2) / c4
        term_y = (2 * (ty - py) * c2 - 2 * ch * dch_dy * dist2) / c4
        term_w = 2 * cw * dcw_dw * dist2 / c4
        term_h = 2 * ch * dch_dh * dist2 / c4
        if kind == "ciou":
            iou_value = inter / union
            angle = jnp.arctan(tw / th) - jnp.arctan(pw / ph)
            v = 4 / math.pi**2 * angle * angle
            alpha = v / (1 - iou_value + v + 0.000001)
            term_w = term_w + alpha * (8 / math.pi**2) * angle * ph
            term_h = term_h + alpha * (-8 / math.pi**2) * angle * pw
        some = c2 > 0
        dx = jnp.where(apart, term_x, jnp.where(some, dx + term_x, dx))
        dy = jnp.where(apart, term_y, jnp.where(some, dy + term_y, dy))
        dw = jnp.where(apart, term_w, jnp.where(some, dw + term_w, dw))
        dh = jnp.where(apart, term_h, jnp.where(some, dh + term_h, dh))
    return jnp.stack([dx, dy, dw, dh], axis=-1)
