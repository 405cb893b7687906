"""A NumPy port of darknet's [yolo] training deltas, used as ground truth in tests.

Written line by line from AlexeyAB/darknet (commit 59596d7) src/yolo_layer.c
(forward_yolo_layer, process_batch, get_yolo_box, delta_yolo_box, delta_yolo_class,
averages_yolo_deltas, compare_yolo_class) and src/box.c (box_iou, box_giou, box_diou,
box_ciou, box_iou_kind, dx_box_iou). It shares no code with `yolov4_jax`: scalar loops over
truths and cells in darknet's order, darknet's memory layout ``[b][n][entry][j][i]``, and
every quirk of the C code as it stands (they are what darknet trains with).

Left out, because no shipped cfg uses them: counters_per_class (classes_multipliers),
focal_loss, truth_thresh < 1, the bad-label rejection options, and ``map``. Truth rows end
at the first ``x == 0``, as in darknet.

Entry point: `yolo_deltas(layer, raw, truths, net_w, net_h)` -> darknet's ``l.delta`` in the
project's NHWC layout (``[B, H, W, A * (5 + C)]``), i.e. minus the gradient of the summed
loss with respect to the [yolo] layer's input; ``adversarial=True`` is
``state.net.adversarial`` (Self-Adversarial Training's first stage, run with no truths).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

FLT_MAX = 3.4028234663852886e38


@dataclasses.dataclass
class YoloLayer:
    """The [yolo] options forward_yolo_layer reads (parser.c::parse_yolo names)."""

    mask: tuple[int, ...]
    biases: tuple[float, ...]  # all anchors, flat: w0, h0, w1, h1, ...
    classes: int
    scale_x_y: float = 1.0
    new_coords: int = 0
    ignore_thresh: float = 0.5
    iou_thresh: float = 1.0
    iou_thresh_kind: str = "iou"
    iou_normalizer: float = 0.75
    obj_normalizer: float = 1.0
    cls_normalizer: float = 1.0
    max_delta: float = FLT_MAX
    objectness_smooth: int = 0
    label_smooth_eps: float = 0.0
    iou_loss: str = "mse"

    @property
    def n(self) -> int:
        return len(self.mask)

    @property
    def total(self) -> int:
        return len(self.biases) // 2


@dataclasses.dataclass
class Box:
    x: float
    y: float
    w: float
    h: float


# ----------------------------------------------------------------------------------- box.c


def overlap(x1, w1, x2, w2):
    left = max(x1 - w1 / 2, x2 - w2 / 2)
    right = min(x1 + w1 / 2, x2 + w2 / 2)
    return right - left


def box_intersection(a: Box, b: Box) -> float:
    w = overlap(a.x, a.w, b.x, b.w)
    h = overlap(a.y, a.h, b.y, b.h)
    if w < 0 or h < 0:
        return 0.0
    return w * h


def box_union(a: Box, b: Box) -> float:
    return a.w * a.h + b.w * b.h - box_intersection(a, b)


def box_iou(a: Box, b: Box) -> float:
    i, u = box_intersection(a, b), box_union(a, b)
    if i == 0 or u == 0:
        return 0.0
    return i / u


def _box_c(a: Box, b: Box):
    top = min(a.y - a.h / 2, b.y - b.h / 2)
    bot = max(a.y + a.h / 2, b.y + b.h / 2)
    left = min(a.x - a.w / 2, b.x - b.w / 2)
    right = max(a.x + a.w / 2, b.x + b.w / 2)
    return top, bot, left, right


def box_giou(a: Box, b: Box) -> float:
    top, bot, left, right = _box_c(a, b)
    c = (right - left) * (bot - top)
    iou = box_iou(a, b)
    if c == 0:
        return iou
    return iou - (c - box_union(a, b)) / c


def box_diou(a: Box, b: Box) -> float:
    top, bot, left, right = _box_c(a, b)
    c = (right - left) ** 2 + (bot - top) ** 2
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = (a.x - b.x) ** 2 + (a.y - b.y) ** 2
    return iou - (d / c) ** 0.6  # box.c's box_diou raises the ratio to 0.6


def box_ciou(a: Box, b: Box) -> float:
    top, bot, left, right = _box_c(a, b)
    c = (right - left) ** 2 + (bot - top) ** 2
    iou = box_iou(a, b)
    if c == 0:
        return iou
    d = ((a.x - b.x) ** 2 + (a.y - b.y) ** 2) / c
    ar = 4 / (math.pi**2) * (math.atan(b.w / b.h) - math.atan(a.w / a.h)) ** 2
    alpha = ar / (1 - iou + ar + 0.000001)
    return iou - (d + alpha * ar)


def box_iou_kind(a: Box, b: Box, kind: str) -> float:
    return {"giou": box_giou, "diou": box_diou, "ciou": box_ciou}.get(kind, box_iou)(a, b)


def _div(num: float, den: float) -> float:
    """C float division: x / 0 is +-inf, 0 / 0 is NaN."""
    if den == 0:
        return math.nan if num == 0 else math.copysign(math.inf, num)
    return num / den


def dx_box_iou(pred: Box, truth: Box, iou_loss: str) -> tuple[float, float, float, float]:
    """box.c::dx_box_iou; returns (p_dx, p_dy, p_dw, p_dh) (its dt, db, dl, dr fields)."""
    t0, b0 = pred.y - pred.h / 2, pred.y + pred.h / 2
    l0, r0 = pred.x - pred.w / 2, pred.x + pred.w / 2
    pred_t, pred_b = min(t0, b0), max(t0, b0)
    pred_l, pred_r = min(l0, r0), max(l0, r0)
    tt, tb = truth.y - truth.h / 2, truth.y + truth.h / 2
    tl, tr = truth.x - truth.w / 2, truth.x + truth.w / 2

    X = (pred_b - pred_t) * (pred_r - pred_l)
    Xhat = (tb - tt) * (tr - tl)
    Ih = min(pred_b, tb) - max(pred_t, tt)
    Iw = min(pred_r, tr) - max(pred_l, tl)
    I = Iw * Ih  # noqa: E741
    U = X + Xhat - I
    S = (pred.x - truth.x) ** 2 + (pred.y - truth.y) ** 2
    giou_Cw = max(pred_r, tr) - min(pred_l, tl)
    giou_Ch = max(pred_b, tb) - min(pred_t, tt)
    giou_C = giou_Cw * giou_Ch

    dX_wrt_t, dX_wrt_b = -(pred_r - pred_l), pred_r - pred_l
    dX_wrt_l, dX_wrt_r = -(pred_b - pred_t), pred_b - pred_t
    dI_wrt_t = -Iw if pred_t > tt else 0.0
    dI_wrt_b = Iw if pred_b < tb else 0.0
    dI_wrt_l = -Ih if pred_l > tl else 0.0
    dI_wrt_r = Ih if pred_r < tr else 0.0
    dU_wrt_t, dU_wrt_b = dX_wrt_t - dI_wrt_t, dX_wrt_b - dI_wrt_b
    dU_wrt_l, dU_wrt_r = dX_wrt_l - dI_wrt_l, dX_wrt_r - dI_wrt_r
    dC_wrt_t = -giou_Cw if pred_t < tt else 0.0
    dC_wrt_b = giou_Cw if pred_b > tb else 0.0
    dC_wrt_l = -giou_Ch if pred_l < tl else 0.0
    dC_wrt_r = giou_Ch if pred_r > tr else 0.0

    p_dt = p_db = p_dl = p_dr = 0.0
    if U > 0:
        p_dt = ((U * dI_wrt_t) - (I * dU_wrt_t)) / (U * U)
        p_db = ((U * dI_wrt_b) - (I * dU_wrt_b)) / (U * U)
        p_dl = ((U * dI_wrt_l) - (I * dU_wrt_l)) / (U * U)
        p_dr = ((U * dI_wrt_r) - (I * dU_wrt_r)) / (U * U)
    p_dt = p_dt if t0 < b0 else p_db
    p_db = p_db if t0 < b0 else p_dt
    p_dl = p_dl if l0 < r0 else p_dr
    p_dr = p_dr if l0 < r0 else p_dl

    if iou_loss == "giou":
        C2 = giou_C * giou_C
        if giou_C > 0:
            p_dt += ((giou_C * dU_wrt_t) - (U * dC_wrt_t)) / C2
            p_db += ((giou_C * dU_wrt_b) - (U * dC_wrt_b)) / C2
            p_dl += ((giou_C * dU_wrt_l) - (U * dC_wrt_l)) / C2
            p_dr += ((giou_C * dU_wrt_r) - (U * dC_wrt_r)) / C2
        if Iw <= 0 or Ih <= 0:
            p_dt = _div((giou_C * dU_wrt_t) - (U * dC_wrt_t), C2)
            p_db = _div((giou_C * dU_wrt_b) - (U * dC_wrt_b), C2)
            p_dl = _div((giou_C * dU_wrt_l) - (U * dC_wrt_l), C2)
            p_dr = _div((giou_C * dU_wrt_r) - (U * dC_wrt_r), C2)

    Ct = min(pred.y - pred.h / 2, truth.y - truth.h / 2)
    Cb = max(pred.y + pred.h / 2, truth.y + truth.h / 2)
    Cl = min(pred.x - pred.w / 2, truth.x - truth.w / 2)
    Cr = max(pred.x + pred.w / 2, truth.x + truth.w / 2)
    Cw, Ch = Cr - Cl, Cb - Ct
    C = Cw * Cw + Ch * Ch

    dCt_dx, dCt_dy, dCt_dw, dCt_dh = (
        0.0,
        (1.0 if pred_t < tt else 0.0),
        0.0,
        (-0.5 if pred_t < tt else 0.0),
    )
    dCb_dx, dCb_dy, dCb_dw, dCb_dh = (
        0.0,
        (1.0 if pred_b > tb else 0.0),
        0.0,
        (0.5 if pred_b > tb else 0.0),
    )
    dCl_dx, dCl_dy, dCl_dw, dCl_dh = (
        (1.0 if pred_l < tl else 0.0),
        0.0,
        (-0.5 if pred_l < tl else 0.0),
        0.0,
    )
    dCr_dx, dCr_dy, dCr_dw, dCr_dh = (
        (1.0 if pred_r > tr else 0.0),
        0.0,
        (0.5 if pred_r > tr else 0.0),
        0.0,
    )
    dCw_dx, dCw_dy, dCw_dw, dCw_dh = (
        dCr_dx - dCl_dx,
        dCr_dy - dCl_dy,
        dCr_dw - dCl_dw,
        dCr_dh - dCl_dh,
    )
    dCh_dx, dCh_dy, dCh_dw, dCh_dh = (
        dCb_dx - dCt_dx,
        dCb_dy - dCt_dy,
        dCb_dw - dCt_dw,
        dCb_dh - dCt_dh,
    )

    p_dx = p_dl + p_dr
    p_dy = p_dt + p_db
    p_dw = p_dr - p_dl  # "For dw and dh, we do not divided by 2."
    p_dh = p_db - p_dt

    if iou_loss in ("diou", "ciou"):
        CC = C * C
        tx_ = _div(2 * (truth.x - pred.x) * C - (2 * Cw * dCw_dx + 2 * Ch * dCh_dx) * S, CC)
        ty_ = _div(2 * (truth.y - pred.y) * C - (2 * Cw * dCw_dy + 2 * Ch * dCh_dy) * S, CC)
        tw_ = _div((2 * Cw * dCw_dw + 2 * Ch * dCh_dw) * S, CC)
        th_ = _div((2 * Cw * dCw_dh + 2 * Ch * dCh_dh) * S, CC)
        if iou_loss == "ciou":
            ar_gt = truth.w / truth.h
            ar_pred = pred.w / pred.h
            ar_loss = 4 / (math.pi**2) * (math.atan(ar_gt) - math.atan(ar_pred)) ** 2
            alpha = ar_loss / (1 - _div(I, U) + ar_loss + 0.000001)
            ar_dw = 8 / (math.pi**2) * (math.atan(ar_gt) - math.atan(ar_pred)) * pred.h
            ar_dh = -8 / (math.pi**2) * (math.atan(ar_gt) - math.atan(ar_pred)) * pred.w
            tw_ += alpha * ar_dw
            th_ += alpha * ar_dh
        if C > 0:
            p_dx += tx_
            p_dy += ty_
            p_dw += tw_
            p_dh += th_
        if Iw <= 0 or Ih <= 0:
            p_dx, p_dy, p_dw, p_dh = tx_, ty_, tw_, th_
    return p_dx, p_dy, p_dw, p_dh


# ---------------------------------------------------------------------------- yolo_layer.c


def _fix_nan_inf(v: float) -> float:
    return 0.0 if (math.isnan(v) or math.isinf(v)) else v


def _clip(v: float, m: float) -> float:
    return m if v > m else (-m if v < -m else v)


def get_yolo_box(out, biases, n, b, mn, i, j, lw, lh, w, h, new_coords) -> Box:
    """get_yolo_box for anchor ``n`` (bias index) at mask slot ``mn``, cell (i, j)."""
    x, y = out[b, mn, 0, j, i], out[b, mn, 1, j, i]
    tw, th = out[b, mn, 2, j, i], out[b, mn, 3, j, i]
    if new_coords:
        bw = tw * tw * 4 * biases[2 * n] / w
        bh = th * th * 4 * biases[2 * n + 1] / h
    else:
        bw = math.exp(tw) * biases[2 * n] / w
        bh = math.exp(th) * biases[2 * n + 1] / h
    return Box((i + x) / lw, (j + y) / lh, bw, bh)


def delta_yolo_box(layer, truth, out, delta, n, b, mn, i, j, lw, lh, w, h, scale, normalizer):
    pred = get_yolo_box(out, layer.biases, n, b, mn, i, j, lw, lh, w, h, layer.new_coords)
    if pred.w == 0:
        pred.w = 1.0
    if pred.h == 0:
        pred.h = 1.0
    if layer.iou_loss == "mse":
        tx = truth.x * lw - i
        ty = truth.y * lh - j
        if layer.new_coords:
            tw = math.sqrt(truth.w * w / (4 * layer.biases[2 * n]))
            th = math.sqrt(truth.h * h / (4 * layer.biases[2 * n + 1]))
        else:
            tw = math.log(truth.w * w / layer.biases[2 * n])
            th = math.log(truth.h * h / layer.biases[2 * n + 1])
        for e, t in enumerate((tx, ty, tw, th)):
            delta[b, mn, e, j, i] += scale * (t - out[b, mn, e, j, i]) * normalizer
        return
    dx, dy, dw, dh = dx_box_iou(pred, truth, layer.iou_loss)
    if not layer.new_coords:
        dw *= math.exp(out[b, mn, 2, j, i])
        dh *= math.exp(out[b, mn, 3, j, i])
    values = [_fix_nan_inf(v * normalizer) for v in (dx, dy, dw, dh)]
    if layer.max_delta != FLT_MAX:
        values = [_clip(v, layer.max_delta) for v in values]
    for e, v in enumerate(values):
        delta[b, mn, e, j, i] += v  # accumulate = 1 in every call of process_batch


def delta_yolo_class(layer, out, delta, b, mn, i, j, class_id):
    eps = layer.label_smooth_eps
    if delta[b, mn, 5 + class_id, j, i]:
        y = 1.0
        if eps:
            y = y * (1 - eps) + 0.5 * eps
        r = y - out[b, mn, 5 + class_id, j, i]
        if not (math.isnan(r) or math.isinf(r)):
            delta[b, mn, 5 + class_id, j, i] = r
        return
    for c in range(layer.classes):
        y = 1.0 if c == class_id else 0.0
        if eps:
            y = y * (1 - eps) + 0.5 * eps
        r = y - out[b, mn, 5 + c, j, i]
        if not (math.isnan(r) or math.isinf(r)):
            delta[b, mn, 5 + c, j, i] = r


def _positive(layer, truth, class_id, out, delta, n, mn, b, i, j, lw, lh, w, h):
    """What process_batch does for a truth on anchor n (mask slot mn)."""
    delta_yolo_box(
        layer, truth, out, delta, n, b, mn, i, j, lw, lh, w, h,
        2 - truth.w * truth.h, layer.iou_normalizer,
    )  # fmt: skip
    obj = layer.obj_normalizer * (1 - out[b, mn, 4, j, i])
    if layer.objectness_smooth:
        if delta[b, mn, 4, j, i] == 0:
            delta[b, mn, 4, j, i] = obj
    else:
        delta[b, mn, 4, j, i] = obj
    delta_yolo_class(layer, out, delta, b, mn, i, j, class_id)


def _adversarial(layer, pred, out, delta, b, mn, i, j):
    """process_batch's ``else if (state.net.adversarial)`` branch for one prediction."""
    scale = pred.w * pred.h
    if scale > 0:
        scale = math.sqrt(scale)
    o = out[b, mn, 4, j, i]
    delta[b, mn, 4, j, i] = scale * layer.obj_normalizer * (0 - o)
    found_object = False
    for c in range(layer.classes):
        if out[b, mn, 5 + c, j, i] * o > 0.25:
            delta[b, mn, 5 + c, j, i] = scale * (0 - out[b, mn, 5 + c, j, i])
            found_object = True
    if found_object:
        for c in range(layer.classes):
            if out[b, mn, 5 + c, j, i] * o < 0.25:
                delta[b, mn, 5 + c, j, i] = scale * (1 - out[b, mn, 5 + c, j, i])
        for e in range(4):
            delta[b, mn, e, j, i] += scale * (0 - out[b, mn, e, j, i])


def yolo_deltas(
    layer: YoloLayer, raw, truths, net_w: int, net_h: int, adversarial: bool = False
) -> np.ndarray:
    """l.delta after forward_yolo_layer in training, in NHWC ``[B, H, W, A * (5 + C)]``.

    ``raw``: the layer's input, NHWC ``[B, H, W, A * (5 + C)]``. ``truths``: ``[B, M, 5]``
    rows (x, y, w, h, class) normalised to the network input; a row with x == 0 ends the
    image's truths.
    """
    raw = np.asarray(raw, np.float64)
    bsz, lh, lw, _ = raw.shape
    entries = 5 + layer.classes
    # darknet's layout: [b][n][entry][j][i].
    out = raw.reshape(bsz, lh, lw, layer.n, entries).transpose(0, 3, 4, 1, 2).copy()
    if not layer.new_coords:
        out[:, :, 0:2] = 1 / (1 + np.exp(-out[:, :, 0:2]))
        out[:, :, 4:] = 1 / (1 + np.exp(-out[:, :, 4:]))
    s = layer.scale_x_y
    out[:, :, 0:2] = out[:, :, 0:2] * s - 0.5 * (s - 1)
    delta = np.zeros_like(out)
    w, h = net_w, net_h

    for b in range(bsz):
        rows = []
        for t in range(truths.shape[1]):
            if not truths[b, t, 0]:
                break
            rows.append((Box(*(float(v) for v in truths[b, t, :4])), int(truths[b, t, 4])))

        for j in range(lh):
            for i in range(lw):
                for mn in range(layer.n):
                    pred = get_yolo_box(
                        out, layer.biases, layer.mask[mn], b, mn, i, j, lw, lh, w, h,
                        layer.new_coords,
                    )  # fmt: skip
                    best_match_iou = 0.0
                    for truth, class_id in rows:
                        if class_id >= layer.classes or class_id < 0:
                            continue
                        match = any(
                            out[b, mn, 5 + c, j, i] > 0.25 for c in range(layer.classes)
                        )  # compare_yolo_class: any class, not class_id
                        iou = box_iou(pred, truth)
                        if iou > best_match_iou and match:
                            best_match_iou = iou
                    o = out[b, mn, 4, j, i]
                    delta[b, mn, 4, j, i] = layer.obj_normalizer * (0 - o)
                    if best_match_iou > layer.ignore_thresh:
                        if layer.objectness_smooth:
                            d = layer.obj_normalizer * (best_match_iou - o)
                            if d > delta[b, mn, 4, j, i]:
                                delta[b, mn, 4, j, i] = d
                        else:
                            delta[b, mn, 4, j, i] = 0
                    elif adversarial:
                        _adversarial(layer, pred, out, delta, b, mn, i, j)

        for truth, class_id in rows:
            if class_id >= layer.classes or class_id < 0:
                continue
            i, j = int(truth.x * lw), int(truth.y * lh)
            shift = Box(0.0, 0.0, truth.w, truth.h)
            best_iou, best_n = 0.0, 0
            for n in range(layer.total):
                anchor = Box(0.0, 0.0, layer.biases[2 * n] / w, layer.biases[2 * n + 1] / h)
                iou = box_iou(anchor, shift)
                if iou > best_iou:
                    best_iou, best_n = iou, n
            if best_n in layer.mask:
                mn = layer.mask.index(best_n)
                _positive(layer, truth, class_id, out, delta, best_n, mn, b, i, j, lw, lh, w, h)
            for n in range(layer.total):
                if n in layer.mask and n != best_n and layer.iou_thresh < 1.0:
                    anchor = Box(0.0, 0.0, layer.biases[2 * n] / w, layer.biases[2 * n + 1] / h)
                    if box_iou_kind(anchor, shift, layer.iou_thresh_kind) > layer.iou_thresh:
                        mn = layer.mask.index(n)
                        _positive(layer, truth, class_id, out, delta, n, mn, b, i, j, lw, lh, w, h)

        if layer.iou_thresh < 1.0:
            for j in range(lh):
                for i in range(lw):
                    for mn in range(layer.n):
                        if delta[b, mn, 4, j, i] != 0:
                            k = sum(
                                1 for c in range(layer.classes) if delta[b, mn, 5 + c, j, i] > 0
                            )
                            if k > 0:
                                delta[b, mn, 0:4, j, i] /= k

    return delta.transpose(0, 3, 4, 1, 2).reshape(bsz, lh, lw, layer.n * entries)
