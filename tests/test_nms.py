"""Tests for yolov4_jax.detection.nms on hand-built cases (IoU arithmetic in the comments)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax.detection.nms import Detections, nms

KINDS = ["greedy", "diou"]


def _run(boxes: list, scores: list, **kwargs) -> Detections:
    """NMS on a single image given as nested lists; returns the batch of one."""
    return nms(jnp.asarray([boxes], jnp.float32), jnp.asarray([scores], jnp.float32), **kwargs)


def _kept(det: Detections) -> list[tuple[float, int]]:
    """(score, class) of the valid detections of image 0, in output order."""
    valid = np.asarray(det.valid[0])
    scores = np.asarray(det.scores[0])[valid]
    classes = np.asarray(det.classes[0])[valid]
    return [(round(float(s), 6), int(c)) for s, c in zip(scores, classes, strict=True)]


@pytest.mark.parametrize("kind", KINDS)
def test_same_class_overlap_suppresses_lower(kind: str) -> None:
    # IoU = (9 * 10) / (100 + 100 - 90) = 9/11 = 0.82 > 0.45. Centres (5,5), (6,5):
    # rho^2 = 1, c^2 = 11^2 + 10^2 = 221, (1/221)^0.6 = 0.039 -> DIoU test 0.78 > 0.45 too.
    det = _run([[0, 0, 10, 10], [1, 0, 11, 10]], [[0.8], [0.9]], kind=kind)
    assert _kept(det) == [(0.9, 0)]
    np.testing.assert_allclose(det.boxes[0, 0], [1, 0, 11, 10])


@pytest.mark.parametrize("kind", KINDS)
def test_different_classes_never_suppress(kind: str) -> None:
    det = _run([[0, 0, 10, 10], [1, 0, 11, 10]], [[0.9, 0.0], [0.0, 0.8]], kind=kind)
    assert _kept(det) == [(0.9, 0), (0.8, 1)]


@pytest.mark.parametrize("kind", KINDS)
def test_one_box_many_classes(kind: str) -> None:
    # Darknet keeps one probability per class; each above-threshold class is a detection.
    det = _run([[0, 0, 10, 10]], [[0.5, 0.1, 0.7]], kind=kind)
    assert _kept(det) == [(0.7, 2), (0.5, 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_iou_just_below_threshold_kept(kind: str) -> None:
    # Side by side, shifted by 4: I = 6 * 10 = 60, U = 200 - 60 = 140, IoU = 3/7 = 0.4286
    # < 0.45, so greedy keeps both. DIoU only lowers the score: rho^2 = 16,
    # c^2 = 14^2 + 10^2 = 296, (16/296)^0.6 = 0.174, 0.4286 - 0.174 = 0.255 < 0.45.
    det = _run([[0, 0, 10, 10], [4, 0, 14, 10]], [[0.9], [0.8]], kind=kind)
    assert _kept(det) == [(0.9, 0), (0.8, 0)]
    # At a threshold of 0.4 greedy suppresses (0.4286 > 0.4), DIoU still keeps (0.255).
    det = _run([[0, 0, 10, 10], [4, 0, 14, 10]], [[0.9], [0.8]], kind=kind, iou_threshold=0.4)
    assert len(_kept(det)) == (1 if kind == "greedy" else 2)


def test_diou_keeps_what_greedy_suppresses() -> None:
    # b = bottom half of a: I = 50, U = 100, IoU = 0.5 > 0.45 -> greedy suppresses b.
    # Centres (5, 5) and (5, 2.5): rho^2 = 6.25; enclosing box = a: c^2 = 10^2 + 10^2 = 200.
    # rho^2/c^2 = 1/32 = 2^-5, (2^-5)^0.6 = 2^-3 = 0.125 -> DIoU test 0.5 - 0.125 = 0.375
    # <= 0.45 -> b is kept.
    boxes = [[0, 0, 10, 10], [0, 0, 10, 5]]
    scores = [[0.9], [0.8]]
    assert _kept(_run(boxes, scores, kind="greedy")) == [(0.9, 0)]
    assert _kept(_run(boxes, scores, kind="diou")) == [(0.9, 0), (0.8, 0)]
    # beta = 1: 0.5 - 1/32 = 0.469 > 0.45 -> suppressed again.
    assert _kept(_run(boxes, scores, kind="diou", beta=1.0)) == [(0.9, 0)]


def test_diou_suppresses_concentric_duplicate() -> None:
    # Same centre: rho = 0, the DIoU test is plain IoU = 64 / 100 = 0.64 > 0.45.
    det = _run([[0, 0, 10, 10], [1, 1, 9, 9]], [[0.9], [0.8]], kind="diou")
    assert _kept(det) == [(0.9, 0)]
    # beta = 0: the penalty is 1 (powf(0, 0) = 1 too), so IoU - 1 suppresses nothing.
    det = _run([[0, 0, 10, 10], [1, 1, 9, 9]], [[0.9], [0.8]], kind="diou", beta=0.0)
    assert _kept(det) == [(0.9, 0), (0.8, 0)]


@pytest.mark.parametrize("kind", KINDS)
def test_suppressed_box_suppresses_nothing(kind: str) -> None:
    # a = (0,0,10,10), b = (2,0,12,10), c = (4,0,14,10).
    # IoU(a, b) = IoU(b, c) = 80 / 120 = 0.667 > 0.45; IoU(a, c) = 60 / 140 = 0.43 < 0.45.
    # DIoU(a,b): rho^2 = 4, c^2 = 244, (4/244)^0.6 = 0.085 -> 0.58 > 0.45.
    # a keeps, b dies by a, c survives because dead b cannot suppress it.
    boxes = [[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]]
    det = _run(boxes, [[0.9], [0.8], [0.7]], kind=kind)
    assert _kept(det) == [(0.9, 0), (0.7, 0)]
    np.testing.assert_allclose(det.boxes[0, :2], [[0, 0, 10, 10], [4, 0, 14, 10]])


def test_score_threshold_is_strict() -> None:
    boxes = [[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]]  # disjoint
    det = _run(boxes, [[0.25], [0.26], [0.3]], score_threshold=0.25)
    assert _kept(det) == [(0.3, 0), (0.26, 0)]
    det = _run(boxes, [[0.25], [0.26], [0.3]], score_threshold=0.5)
    assert _kept(det) == []
    assert not bool(det.valid.any())


def test_ordering_and_padding() -> None:
    boxes = [[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]]  # disjoint
    det = _run(boxes, [[0.3, 0.0], [0.0, 0.9], [0.6, 0.0]], max_detections=5)
    assert det.scores.shape == (1, 5)
    np.testing.assert_allclose(det.scores[0], [0.9, 0.6, 0.3, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(det.valid[0], [True, True, True, False, False])
    np.testing.assert_array_equal(det.classes[0], [1, 0, 0, 0, 0])
    np.testing.assert_allclose(
        det.boxes[0], [[2, 0, 3, 1], [4, 0, 5, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
    )


def test_max_detections_truncates() -> None:
    boxes = [[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]]
    det = _run(boxes, [[0.3], [0.9], [0.6]], max_detections=2)
    assert _kept(det) == [(0.9, 0), (0.6, 0)]


def test_pre_nms_top_k() -> None:
    # Only the 2 best candidates enter NMS; outputs are padded up to max_detections = 4.
    boxes = [[0, 0, 1, 1], [2, 0, 3, 1], [4, 0, 5, 1]]
    det = _run(boxes, [[0.3], [0.9], [0.6]], max_detections=4, pre_nms_top_k=2)
    assert det.valid.shape == (1, 4)
    assert _kept(det) == [(0.9, 0), (0.6, 0)]


def test_batch_shapes_under_jit() -> None:
    rng = np.random.default_rng(0)
    n, m, c, k = 2, 50, 3, 7
    lo = rng.uniform(0, 0.8, (n, m, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.05, 0.2, (n, m, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (n, m, c)).astype(np.float32)
    scores[1] *= 0.1  # image 1: everything below 0.25 -> no detections
    run = jax.jit(lambda b, s: nms(b, s, max_detections=k, kind="diou"))
    det = run(boxes, scores)
    assert det.boxes.shape == (n, k, 4) and det.boxes.dtype == jnp.float32
    assert det.scores.shape == (n, k)
    assert det.classes.shape == (n, k) and det.classes.dtype == jnp.int32
    assert det.valid.shape == (n, k) and det.valid.dtype == jnp.bool_
    assert bool(det.valid[0].all()) and not bool(det.valid[1].any())
    assert np.all(np.diff(np.asarray(det.scores[0])) <= 0)
    np.testing.assert_array_equal(det.scores[1], 0)
    # Per image, batched and unbatched results agree.
    single = nms(boxes[:1], scores[:1], max_detections=k, kind="diou")
    for x, y in zip(single, det, strict=True):
        np.testing.assert_array_equal(x[0], y[0])


def test_bad_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        _run([[0, 0, 1, 1]], [[0.9]], kind="soft")


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float, kind: str) -> set:
    """Per-class loop in the style of darknet's do_nms_sort / diounms_sort (numpy, float64)."""

    def overlap(a: np.ndarray, b: np.ndarray) -> float:
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        value = inter / union
        if kind == "diou":
            cw = max(a[2], b[2]) - min(a[0], b[0])
            ch = max(a[3], b[3]) - min(a[1], b[1])
            rho2 = ((a[0] + a[2] - b[0] - b[2]) / 2) ** 2 + ((a[1] + a[3] - b[1] - b[3]) / 2) ** 2
            value -= (rho2 / (cw**2 + ch**2)) ** 0.6
        return value

    kept = set()
    for k in range(scores.shape[1]):
        prob = np.where(scores[:, k] > 0.25, scores[:, k], 0.0)
        order = np.argsort(-prob, kind="stable")
        for pos, i in enumerate(order):
            if prob[i] == 0:
                continue
            kept.add((int(i), k))
            for j in order[pos + 1 :]:
                if overlap(boxes[i], boxes[j]) > thresh:
                    prob[j] = 0
    return kept


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_loop(kind: str) -> None:
    rng = np.random.default_rng(1)
    m, c = 60, 3
    lo = rng.uniform(0, 0.7, (m, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.1, 0.3, (m, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (m, c)).astype(np.float32)
    det = nms(boxes[None], scores[None], kind=kind, max_detections=m * c)
    valid = np.asarray(det.valid[0])
    got = set()
    out_boxes, out_classes = np.asarray(det.boxes[0])[valid], np.asarray(det.classes[0])[valid]
    for box, cls in zip(out_boxes, out_classes, strict=True):
        (idx,) = np.nonzero(np.all(boxes == box, axis=1))
        got.add((int(idx[0]), int(cls)))
    expected = _reference_nms(boxes.astype(np.float64), scores, 0.45, kind)
    assert len(expected) < int((scores > 0.25).sum())  # some suppression happened
    assert got == expected


def test_nms_options_follow_the_last_yolo_layer_as_darknet():
    import dataclasses

    from yolov4_jax.evaluation.prediction import nms_options_for
    from yolov4_jax.models import specs

    head = specs.Yolo(mask=(0,), anchors=((10.0, 10.0),))
    diou = dataclasses.replace(head, nms_kind="diounms", beta_nms=0.8)
    greedy_diou = dataclasses.replace(head, nms_kind="greedynms", beta_nms=0.9)
    options = nms_options_for([head, diou])
    assert (options.kind, options.beta) == ("diou", 0.8)
    assert nms_options_for([diou, head]).kind == "greedy"  # only the last layer counts
    # greedynms: DIoU with beta fixed at .6, whatever beta_nms says.
    options = nms_options_for([greedy_diou])
    assert (options.kind, options.beta) == ("diou", 0.6)
    assert nms_options_for([head], iou_threshold=0.3).iou_threshold == 0.3
