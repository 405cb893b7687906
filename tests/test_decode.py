"""Tests for yolov4_jax.detection.decode.decode_yolo on hand-computed cells."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from yolov4_jax.detection.decode import decode_yolo

C = 3  # classes
A = 2  # anchors per head
ANCHORS = np.asarray([[0.1, 0.05], [0.3, 0.4]], np.float32)  # [A, 2] normalised (w, h)


def _raw(h: int, w: int, n: int = 1) -> np.ndarray:
    return np.zeros((n, h, w, A * (5 + C)), np.float32)


def _set(raw: np.ndarray, img: int, row: int, col: int, anchor: int, values: list[float]) -> None:
    """Writes (tx, ty, tw, th, obj, classes...) for one anchor of one cell."""
    start = anchor * (5 + C)
    raw[img, row, col, start : start + 5 + C] = values


# Cell (row 1, col 0), anchor 1 on a 2x2 grid, logistic mode:
# sigmoid(0) = 0.5, sigmoid(log 3) = 3/4, sigmoid(log 4) = 4/5, sigmoid(-log 3) = 1/4.
LOGITS = [0.0, math.log(3), math.log(2), 0.0, math.log(4), 0.0, math.log(3), -math.log(3)]
INDEX = (1 * 2 + 0) * A + 1  # (row * W + col) * A + anchor = 5


def test_logistic_cell() -> None:
    raw = _raw(2, 2)
    _set(raw, 0, 1, 0, 1, LOGITS)
    boxes, obj, cls = decode_yolo(raw, ANCHORS, num_classes=C)
    assert boxes.shape == (1, 8, 4) and obj.shape == (1, 8) and cls.shape == (1, 8, C)
    # bx = (col + 0.5) / W = 0.25, by = (row + 3/4) / H = 0.875,
    # bw = exp(log 2) * 0.3 = 0.6, bh = exp(0) * 0.4 = 0.4
    # -> xyxy (0.25 - 0.3, 0.875 - 0.2, 0.25 + 0.3, 0.875 + 0.2).
    np.testing.assert_allclose(boxes[0, INDEX], [-0.05, 0.675, 0.55, 1.075], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(obj[0, INDEX], 0.8, rtol=1e-6)
    np.testing.assert_allclose(cls[0, INDEX], [0.5, 0.75, 0.25], rtol=1e-6)
    # All-zero logits elsewhere: (row 0, col 0, anchor 0) is index 0, centre (0.25, 0.25),
    # size = anchor 0 = (0.1, 0.05) -> (0.2, 0.225, 0.3, 0.275).
    np.testing.assert_allclose(boxes[0, 0], [0.2, 0.225, 0.3, 0.275], rtol=1e-6)
    # (row 0, col 1, anchor 1) is index 3: centre (0.75, 0.25), size (0.3, 0.4).
    np.testing.assert_allclose(boxes[0, 3], [0.6, 0.05, 0.9, 0.45], rtol=1e-6)
    np.testing.assert_allclose(obj[0, 3], 0.5)
    np.testing.assert_allclose(cls[0, 3], [0.5, 0.5, 0.5])


def test_scale_x_y() -> None:
    raw = _raw(2, 2)
    _set(raw, 0, 1, 0, 1, LOGITS)
    boxes, _, _ = decode_yolo(raw, ANCHORS, num_classes=C, scale_x_y=2.0)
    # x' = 2 * 0.5 - (2 - 1) / 2 = 0.5 -> bx = 0.25; y' = 2 * 0.75 - 0.5 = 1.0 -> by = 1.0.
    np.testing.assert_allclose(boxes[0, INDEX], [-0.05, 0.8, 0.55, 1.2], rtol=1e-6, atol=1e-7)
    # A zero logit stays at the cell centre for any s: s * 0.5 - (s - 1) / 2 = 0.5.
    np.testing.assert_allclose(boxes[0, 0], [0.2, 0.225, 0.3, 0.275], rtol=1e-6)
    # s = 1.2 (yolov4.cfg stride-8 head), tx = log 3: x' = 1.2 * 0.75 - 0.1 = 0.8.
    raw = _raw(2, 2)
    _set(raw, 0, 0, 0, 0, [math.log(3), 0, 0, 0, 0, 0, 0, 0])
    boxes, _, _ = decode_yolo(raw, ANCHORS, num_classes=C, scale_x_y=1.2)
    # bx = 0.8 / 2 = 0.4, w = 0.1 -> x1 = 0.35, x2 = 0.45.
    np.testing.assert_allclose(boxes[0, 0, [0, 2]], [0.35, 0.45], rtol=1e-6)


def test_new_coords() -> None:
    raw = _raw(2, 2)
    # Values are already logistic outputs; nothing is squashed again.
    _set(raw, 0, 0, 1, 0, [0.25, 0.5, 0.5, 1.0, 0.9, 0.1, 0.2, 0.3])
    index = (0 * 2 + 1) * A + 0  # 2
    boxes, obj, cls = decode_yolo(raw, ANCHORS, num_classes=C, scale_x_y=2.0, new_coords=True)
    # x' = 2 * 0.25 - 0.5 = 0 -> bx = (1 + 0) / 2 = 0.5; y' = 2 * 0.5 - 0.5 = 0.5 -> by = 0.25.
    # bw = 4 * 0.5^2 * 0.1 = 0.1; bh = 4 * 1^2 * 0.05 = 0.2 -> (0.45, 0.15, 0.55, 0.35).
    np.testing.assert_allclose(boxes[0, index], [0.45, 0.15, 0.55, 0.35], rtol=1e-6)
    np.testing.assert_allclose(obj[0, index], 0.9, rtol=1e-6)
    np.testing.assert_allclose(cls[0, index], [0.1, 0.2, 0.3], rtol=1e-6)
    # Zero raw values: centre at x' = -0.5 -> bx = (0 - 0.5) / 2, zero size, zero probs.
    np.testing.assert_allclose(boxes[0, 0], [-0.25, -0.25, -0.25, -0.25], atol=1e-7)
    np.testing.assert_allclose(obj[0, 0], 0.0)
    # s = 1: x' = tx. Centre (1 + 0.25) / 2 = 0.625, (0 + 0.5) / 2 = 0.25.
    boxes, _, _ = decode_yolo(raw, ANCHORS, num_classes=C, new_coords=True)
    np.testing.assert_allclose(boxes[0, index], [0.575, 0.15, 0.675, 0.35], rtol=1e-6)


def test_non_square_grid_batch_and_jit() -> None:
    raw = _raw(2, 3, n=2)  # H = 2, W = 3
    _set(raw, 1, 1, 2, 0, [0, 0, 0, 0, 0, 0, 0, 0])
    _set(raw, 0, 1, 2, 0, [0, 0, 0, 0, 20.0, 0, 0, 0])  # only image 0 is confident
    decode = jax.jit(functools.partial(decode_yolo, num_classes=C, scale_x_y=1.05))
    boxes, obj, cls = decode(jnp.asarray(raw), jnp.asarray(ANCHORS))
    assert boxes.shape == (2, 12, 4) and obj.shape == (2, 12) and cls.shape == (2, 12, C)
    index = (1 * 3 + 2) * A + 0  # 10
    # bx = (2 + 0.5) / W = 2.5 / 3, by = (1 + 0.5) / H = 0.75, size anchor 0 = (0.1, 0.05).
    cx, cy = 2.5 / 3, 0.75
    expected = [cx - 0.05, cy - 0.025, cx + 0.05, cy + 0.025]
    np.testing.assert_allclose(boxes[0, index], expected, rtol=1e-6)
    np.testing.assert_allclose(boxes[1, index], expected, rtol=1e-6)
    assert obj[0, index] > 0.99 and abs(float(obj[1, index]) - 0.5) < 1e-7
    assert int(jnp.argmax(obj[0])) == index


def test_bad_channels() -> None:
    with pytest.raises(ValueError, match="channels"):
        decode_yolo(np.zeros((1, 2, 2, 15), np.float32), ANCHORS, num_classes=C)
