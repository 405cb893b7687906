"""Anchors by k-means with the 1 - IoU distance (yolov4_jax/anchors.py, darknet calc_anchors)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import test_tiny
from yolov4_jax import anchors
from yolov4_jax.data import augment, sources
from yolov4_jax.models import factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_LINE = re.compile(r'^--config\.model\.anchors="(.*)"', re.MULTILINE)


@pytest.fixture
def config(tiny_data_dir):
    c = test_tiny.get_config()
    c.data.data_dir = tiny_data_dir
    return c


def clustered_sizes(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight groups of (w, h) around known centres (sorted by area): (sizes, centres)."""
    centres = np.array([[10.0, 14.0], [48.0, 30.0], [90.0, 160.0]])
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([c * rng.uniform(0.98, 1.02, (50, 2)) for c in centres])
    return sizes, centres


def test_shape_iou_hand_values() -> None:
    iou = anchors.shape_iou(
        np.array([[2.0, 2.0], [2.0, 1.0], [3.0, 5.0]]), np.array([[1, 1], [1, 2], [3, 5]])
    )
    np.testing.assert_allclose(iou[0], [0.25, 0.5, 4 / 15])
    np.testing.assert_allclose(iou[1, 1], 1 / 3)  # (2, 1) vs (1, 2): 1 / (2 + 2 - 1)
    np.testing.assert_allclose(iou[2, 2], 1.0)
    assert anchors.mean_best_iou(np.array([[2.0, 2.0], [1.0, 2.0]]), np.array([[1.0, 1.0]])) == (
        pytest.approx((0.25 + 0.5) / 2)
    )
    with pytest.raises(ValueError, match="positive"):
        anchors.shape_iou(np.array([[0.0, 1.0]]), np.array([[1.0, 1.0]]))


@pytest.mark.parametrize("init", anchors.INITS)
def test_kmeans_recovers_clusters(init) -> None:
    sizes, centres = clustered_sizes()
    found, iou = anchors.kmeans_anchors(sizes, 3, seed=1, init=init)
    np.testing.assert_allclose(found, centres, rtol=0.01)
    assert iou > 0.97
    assert iou == pytest.approx(anchors.mean_best_iou(sizes, found))


def test_kmeans_beats_random_boxes_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    sizes = np.exp(rng.normal([3.0, 3.2], [0.8, 0.9], (400, 2)))
    found, iou = anchors.kmeans_anchors(sizes, 6, seed=3)
    areas = found[:, 0] * found[:, 1]
    assert found.shape == (6, 2) and np.all(np.diff(areas) >= 0)
    for _ in range(20):
        picked = sizes[rng.choice(len(sizes), 6, replace=False)]
        assert iou >= anchors.mean_best_iou(sizes, picked)
    again, iou_again = anchors.kmeans_anchors(sizes, 6, seed=3)
    np.testing.assert_array_equal(found, again)
    assert iou == iou_again


def test_kmeans_reseeds_empty_clusters() -> None:
    sizes = np.array([[10.0, 10.0]] * 5 + [[100.0, 100.0]] * 5 + [[30.0, 30.0]])
    # No box is nearest to (1000, 1000): its cluster is empty and restarts at the box worst
    # covered by the others, (30, 30) (IoU 1/9 with (10, 10)); darknet would keep (1000, 1000).
    start = np.array([[1000.0, 1000.0], [10.0, 10.0], [100.0, 100.0]])
    found, iou = anchors.kmeans_anchors(sizes, 3, init=start)
    np.testing.assert_array_equal(found, [[10, 10], [30, 30], [100, 100]])
    assert iou == 1.0


def test_kmeans_errors() -> None:
    sizes = np.array([[10.0, 10.0]] * 5 + [[20.0, 20.0]] * 5)
    with pytest.raises(ValueError, match="only 2 distinct box sizes"):
        anchors.kmeans_anchors(sizes, 3)
    with pytest.raises(ValueError, match="init"):
        anchors.kmeans_anchors(sizes, 2, init="nope")
    with pytest.raises(ValueError, match="expected k=2"):
        anchors.kmeans_anchors(sizes, 2, init=np.ones((3, 2)))


def test_box_sizes_match_decoded_boxes(config) -> None:
    source = sources.open_split(
        sources.load_builder(config.data.name, config.data.data_dir), "train"
    )
    samples = [sources.decode(source[i])[0] for i in range(len(source))]
    for letterbox in (False, True):
        config.data.letterbox = letterbox
        sizes = anchors.box_sizes(config, size=80)
        expected = []
        for s in samples:
            h, w = s.image.shape[:2]
            scale = np.array([80 / w, 80 / h])
            if letterbox:
                new_h, new_w, _, _ = augment.letterbox_geometry(h, w, (80, 80))
                scale = np.array([new_w / w, new_h / h])
            expected.append((s.boxes[:, 2:] - s.boxes[:, :2]) * scale)
        np.testing.assert_allclose(sizes, np.concatenate(expected), rtol=1e-4)
        assert np.all(sizes > 0) and np.all(sizes <= 80)
    assert len(anchors.box_sizes(config, max_images=5)) < len(sizes)


def test_box_sizes_without_boxes(config, monkeypatch) -> None:
    empty = [{"image": b"", "objects": {"bbox": np.zeros((0, 4)), "label": []}}] * 3
    monkeypatch.setattr(sources, "open_split", lambda builder, split: empty)
    with pytest.raises(ValueError, match="no boxes"):
        anchors.box_sizes(config)


def test_report_line_is_accepted_by_the_model(config) -> None:
    report = anchors.anchors_report(config, 4, size=64)
    assert re.search(r"^anchors = (\d+,\d+, ){3}\d+,\d+$", report, re.MULTILINE)
    pairs = ast.literal_eval(CONFIG_LINE.search(report).group(1))
    assert len(pairs) == 4 and all(0 < v <= 64 for pair in pairs for v in pair)
    config.model.anchors = pairs
    heads = [layer for layer in factory.model_layers(config.model) if hasattr(layer, "mask")]
    assert {a for h in heads for a in h.head_anchors} == {tuple(map(float, p)) for p in pairs}
    with pytest.raises(ValueError, match="multiple of 2"):
        anchors.anchors_report(config, 3)


def test_cli(tiny_data_dir) -> None:
    cmd = [sys.executable, "-m", "yolov4_jax.anchors", "--config=configs/test_tiny.py"]
    cmd += [f"--config.data.data_dir={tiny_data_dir}", "--num=4", "--max_images=20"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    line = CONFIG_LINE.search(run.stdout)
    new_iou = re.search(r"avg IoU = ([\d.]+) % with these 4 anchors", run.stdout).group(1)
    # The printed line, pasted back, is parsed by config_flags and becomes the current anchors.
    run = subprocess.run(
        cmd + [line.group(0).replace('"', "")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert f"avg IoU = {new_iou} % with config.model.anchors (4 used by its 2 heads)" in run.stdout
