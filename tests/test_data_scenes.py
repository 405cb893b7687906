"""The embedded detection scenes: only the shape names the class (yolov4_jax/data/scenes.py)."""

from __future__ import annotations

import cv2
import numpy as np

from yolov4_jax.data import scenes


def _scenes(count: int, split: int = 0):
    for i in range(count):
        yield scenes.render_image(np.random.default_rng([0, split, i]), 224, 320, 8)


def _box_features(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per box: mean hue (as a unit vector), mean and spread of RGB: colour, brightness, texture."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    out = []
    for x0, y0, x1, y1 in boxes.astype(int):
        rgb = image[y0:y1, x0:x1].reshape(-1, 3).astype(np.float32) / 255
        hue = hsv[y0:y1, x0:x1, 0].ravel() * np.pi / 90
        out.append([np.cos(hue).mean(), np.sin(hue).mean(), *rgb.mean(0), *rgb.std(0)])
    return np.array(out).reshape(-1, 8)


def _knn_accuracy(train_x, train_y, test_x, test_y, k: int = 15) -> float:
    d = ((test_x[:, None] - train_x[None]) ** 2).sum(-1)
    nearest = train_y[np.argsort(d, 1)[:, :k]]
    votes = np.array(
        [np.bincount(row, minlength=len(scenes.CLASS_NAMES)).argmax() for row in nearest]
    )
    return float((votes == test_y).mean())


def test_scenes_are_deterministic() -> None:
    a = scenes.render_image(np.random.default_rng([0, 0, 5]), 224, 320, 8)
    b = scenes.render_image(np.random.default_rng([0, 0, 5]), 224, 320, 8)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_colour_brightness_and_texture_do_not_name_the_class() -> None:
    data = [
        (_box_features(image, boxes), labels, image, boxes) for image, boxes, labels in _scenes(240)
    ]
    x = np.concatenate([d[0] for d in data])
    y = np.concatenate([d[1] for d in data])
    half = len(y) // 2
    majority = np.bincount(y[half:]).max() / (len(y) - half)
    accuracy = _knn_accuracy(x[:half], y[:half], x[half:], y[half:])
    assert accuracy < majority + 0.05, (accuracy, majority)
    # Control: the same classifier finds a colour cue where there is one (v1.0.0's hue per class).
    tinted = []
    for _, labels, image, boxes in data:
        image = image.copy()
        for (x0, y0, x1, y1), label in zip(boxes.astype(int), labels, strict=True):
            hsv = np.array([[[36 * label, 200, 200]]], np.uint8)
            image[y0:y1, x0:x1] = (
                cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] // 2 + image[y0:y1, x0:x1] // 2
            )
        tinted.append(_box_features(image, boxes))
    x = np.concatenate(tinted)
    assert _knn_accuracy(x[:half], y[:half], x[half:], y[half:]) > majority + 0.3


def test_sizes_border_cuts_and_class_balance() -> None:
    sides, fractions, labels_all = [], [], []
    touching = counted = 0
    for image, boxes, labels in _scenes(200):
        h, w = image.shape[:2]
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w) and np.all(boxes[:, 3] <= h)
        assert np.all(boxes[:, 2:] > boxes[:, :2])
        sides += np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).tolist()
        fractions += (
            np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / min(h, w)
        ).tolist()
        edge = (boxes[:, 0] == 0) | (boxes[:, 1] == 0) | (boxes[:, 2] == w) | (boxes[:, 3] == h)
        touching += int(edge.sum())
        counted += len(boxes)
        labels_all += labels.tolist()
    sides, fractions = np.array(sides), np.array(fractions)
    assert (sides < 12).sum() > 20  # about 8 px objects
    assert (fractions > 0.7).sum() > 10  # objects filling most of the image
    assert 0.05 < touching / counted < 0.4  # some objects are cut by the border
    counts = np.bincount(labels_all, minlength=len(scenes.CLASS_NAMES)) / len(labels_all)
    np.testing.assert_allclose(counts, scenes.CLASS_FREQUENCIES, atol=0.03)
    assert counts.max() > 3 * counts.min()  # uneven on purpose
    assert counted / 200 > 3  # several objects per image
