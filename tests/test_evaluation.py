"""COCO evaluation: hand-made cases of known AP, and `evaluate` end to end on embedded data."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from yolov4_jax import data, evaluation
from yolov4_jax.data import sources, synthetic
from yolov4_jax.detection.nms import Detections
from yolov4_jax.evaluation import coco

NAMES = ("cat", "dog", "bird")


def batch_arrays(gt, dets, sizes=None):
    """`CocoEvaluator.add` arguments from per-image lists.

    gt[i]: list of (x1, y1, x2, y2, label); dets[i]: list of (x1, y1, x2, y2, class, score).
    """
    n = len(gt)
    m = max(1, *(len(g) for g in gt))
    k = max(1, *(len(d) for d in dets))
    out = {
        "image_ids": np.arange(100, 100 + n, dtype=np.int64),
        "orig_sizes": np.array(sizes or [(480, 640)] * n, np.int32),
        "gt_boxes": np.zeros((n, m, 4), np.float32),
        "gt_labels": np.zeros((n, m), np.int32),
        "gt_mask": np.zeros((n, m), bool),
        "det_boxes": np.zeros((n, k, 4), np.float32),
        "det_scores": np.zeros((n, k), np.float32),
        "det_classes": np.zeros((n, k), np.int32),
        "det_valid": np.zeros((n, k), bool),
    }
    for i in range(n):
        for j, (*box, label) in enumerate(gt[i]):
            out["gt_boxes"][i, j], out["gt_labels"][i, j], out["gt_mask"][i, j] = box, label, True
        for j, (*box, cls, score) in enumerate(dets[i]):
            out["det_boxes"][i, j], out["det_classes"][i, j] = box, cls
            out["det_scores"][i, j], out["det_valid"][i, j] = score, True
    return out


def score(gt, dets, names=NAMES, **kwargs):
    evaluator = evaluation.CocoEvaluator(names)
    evaluator.add(**batch_arrays(gt, dets), **kwargs)
    return evaluator.compute()


# Boxes of all three COCO area ranges (small < 32^2 <= medium < 96^2 <= large), two classes.
GT = [
    [(10, 10, 30, 30, 0), (100, 100, 200, 220, 1)],
    [(50, 60, 110, 100, 0)],
    [(300, 200, 500, 400, 1), (5, 5, 20, 40, 1)],
]


def perfect(gt):
    return [[(*box, label, 1.0) for *box, label in image] for image in gt]


def test_crowd_annotations_are_ignore_regions():
    # One cat and one crowd of cats; the best-scored detection lies on the crowd.
    gt = [[(10, 10, 60, 60, 0), (200, 200, 400, 400, 0)]]
    dets = [[(200, 200, 400, 400, 0, 0.95), (10, 10, 60, 60, 0, 0.9)]]
    crowd = np.asarray([[False, True]])
    # COCO: the detection on the crowd is neither a true nor a false positive -> AP 1.
    assert score(gt, dets, gt_crowd=crowd)["AP"] == pytest.approx(1.0)
    # Crowd dropped from the ground truth (the old behaviour): a false positive ranked first.
    assert score([gt[0][:1]], dets)["AP"] == pytest.approx(0.5)
    # Crowd as an ordinary object: two true positives.
    assert score(gt, dets)["AP"] == pytest.approx(1.0)
    assert score(gt, dets)["AR100"] == pytest.approx(1.0)


def test_area_ranges_use_the_annotations_area():
    gt = [[(10, 10, 30, 30, 0)]]  # a 20 x 20 box: 400 px^2, "small" by its box
    dets = perfect(gt)
    by_box = score(gt, dets)
    assert by_box["AP_small"] == pytest.approx(1.0) and math.isnan(by_box["AP_medium"])
    # Its annotation says 2000 px^2 (a segmentation area, say): "medium", as COCO counts it.
    by_area = score(gt, dets, gt_area=np.asarray([[2000.0]]))
    assert by_area["AP_medium"] == pytest.approx(1.0) and math.isnan(by_area["AP_small"])
    # -1: no area given, the box area is used.
    assert score(gt, dets, gt_area=np.asarray([[-1.0]]))["AP_small"] == pytest.approx(1.0)


def test_perfect_detections_score_one():
    metrics = score(GT, perfect(GT))
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["AP/cat"] == pytest.approx(1.0) and metrics["AP/dog"] == pytest.approx(1.0)
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 5


def test_shifted_detections_match_only_at_low_iou():
    # A 100x100 box shifted by 30 px: IoU 7000 / 13000 = .54, a match at .50 only.
    gt = [[(100, 100, 200, 200, 0)], [(300, 50, 400, 150, 1)]]
    dets = [[(130, 100, 230, 200, 0, 0.9)], [(300, 80, 400, 180, 1, 0.8)]]
    metrics = score(gt, dets)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == 0.0
    assert metrics["AP"] == pytest.approx(0.1)  # 1 of the 10 IoU thresholds .50:.95


def test_no_detections_score_zero():
    metrics = score(GT, [[], [], []])
    for key in ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AP/cat", "AP/dog"):
        assert metrics[key] == 0.0, key
    assert metrics["num_detections"] == 0


def test_class_without_ground_truth_is_left_out():
    # "bird" has no ground truth: no AP/bird, and its detections do not lower the mean (COCO).
    dets = perfect(GT)
    dets[0].append((400, 300, 450, 350, 2, 0.99))
    metrics = score(GT, dets)
    assert "AP/bird" not in metrics
    assert metrics["AP"] == pytest.approx(1.0)


def test_mean_over_classes_with_ground_truth():
    # cats all found, dogs all missed, birds absent: AP = (1 + 0) / 2.
    dets = [[d for d in image if d[4] == 0] for image in perfect(GT)]
    metrics = score(GT, dets)
    assert metrics["AP/cat"] == pytest.approx(1.0) and metrics["AP/dog"] == 0.0
    assert metrics["AP"] == pytest.approx(0.5)


def test_images_without_ground_truth_count_false_positives():
    gt = [[(10, 10, 90, 90, 0)], []]
    found = [(10, 10, 90, 90, 0, 0.5)]
    assert score(gt, [found, [(0, 0, 50, 50, 0, 0.4)]])["AP"] == pytest.approx(1.0)
    # A false positive on the empty image ranked first: precision 1/2 at every recall.
    metrics = score(gt, [found, [(0, 0, 50, 50, 0, 0.6)]])
    assert metrics["AP"] == pytest.approx(0.5) and metrics["num_images"] == 2


def test_no_ground_truth_at_all_is_nan():
    metrics = score([[], []], [[(0, 0, 50, 50, 0, 0.6)], []])
    assert math.isnan(metrics["AP"]) and not any(k.startswith("AP/") for k in metrics)
    assert math.isnan(evaluation.CocoEvaluator(NAMES).compute()["AP"])


def test_padding_rows_are_skipped_and_ids_checked():
    arrays = batch_arrays(GT, [[], [], []])
    evaluator = evaluation.CocoEvaluator(NAMES)
    evaluator.add(**arrays, valid=np.array([True, False, True]))
    assert evaluator.num_images == 2
    with pytest.raises(ValueError, match="added twice"):
        evaluator.add(**arrays)
    bad = batch_arrays([[(0, 0, 10, 10, 3)]], [[]])
    with pytest.raises(ValueError, match="outside the 3 classes"):
        evaluation.CocoEvaluator(NAMES).add(**bad)


def test_pycocotools_output_is_captured(capsys):
    score(GT, perfect(GT))
    assert capsys.readouterr().out == ""
    evaluator = evaluation.CocoEvaluator(NAMES, verbose=True)
    evaluator.add(**batch_arrays(GT, perfect(GT)))
    evaluator.compute()
    assert "Average Precision" in capsys.readouterr().out


def test_gather_keeps_64_bit_image_ids():
    rows = {"image_ids": np.array([2**40 + 3, -7], np.int64), "valid": np.array([True, False])}
    gathered = coco._gather_rows(rows)
    np.testing.assert_array_equal(gathered["image_ids"], rows["image_ids"])
    np.testing.assert_array_equal(gathered["valid"], rows["valid"])


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> ml_collections.ConfigDict:
    path = str(tmp_path_factory.mktemp("tfds"))
    sources.load_builder("yolov4_synthetic/tiny", path)  # 12 validation images
    c = base.get_config()
    c.data.name = "yolov4_synthetic/tiny"
    c.data.data_dir = path
    c.data.image_size = 64
    c.data.batch_size = 5  # 3 batches, the last with 3 padding rows
    c.data.max_boxes = 12
    return c


def ground_truth_predictor(config):
    """A stand-in for `make_predict_fn`: returns, in order, the ground truth of each batch."""
    batches = iter(data.create_eval_iterator(config))

    def predict(variables, images):
        del variables
        batch = next(batches)
        np.testing.assert_array_equal(images, batch["image"])  # the same batch in order
        mask = batch["mask"]
        return Detections(
            boxes=jnp.asarray(batch["boxes"]),
            scores=jnp.asarray(mask, jnp.float32),
            classes=jnp.asarray(batch["labels"]),
            valid=jnp.asarray(mask),
        )

    return predict


@pytest.mark.parametrize("letterbox", [False, True])
def test_evaluate_ground_truth_end_to_end(config, letterbox):
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.letterbox = letterbox
    metrics = evaluation.evaluate(ground_truth_predictor(config), {}, config)
    assert metrics["num_images"] == 12
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    per_class = {k: v for k, v in metrics.items() if k.startswith("AP/")}
    assert per_class and set(per_class) <= {f"AP/{n}" for n in synthetic.CLASS_NAMES}
    assert all(v == pytest.approx(1.0) for v in per_class.values())


def test_evaluate_max_batches_and_letterbox_override(config):
    letterboxed = ml_collections.ConfigDict(config.to_dict())
    letterboxed.data.letterbox = True
    # `letterbox=True` must reach the iterator too, or the boxes would map back wrongly.
    metrics = evaluation.evaluate(
        ground_truth_predictor(letterboxed), {}, config, letterbox=True, max_batches=1
    )
    assert metrics["num_images"] == 5 and metrics["AP"] == pytest.approx(1.0)


def test_shard_predict_fn_matches_the_plain_call():
    mesh = jax.make_mesh((jax.device_count(),), ("data",))

    @jax.jit
    def predict(variables, images):
        x = images.astype(jnp.float32).mean(axis=(1, 2))  # [B, 3]
        boxes = jnp.stack([x[:, 0], x[:, 1], x[:, 0] + 1, x[:, 1] + 2], -1)[:, None]
        scores = x[:, 2:3] * variables["scale"]
        return Detections(boxes, scores, jnp.zeros_like(scores, jnp.int32), scores > 100)

    images = np.random.default_rng(0).integers(0, 256, (2 * jax.device_count(), 4, 4, 3), np.uint8)
    variables = {"scale": jnp.float32(2.0)}
    sharded = evaluation.shard_predict_fn(predict, mesh)(variables, images)
    for got, want in zip(sharded, predict(variables, images), strict=True):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want)


def write_darknet_files(folder, num_classes: int) -> tuple[str, str]:
    """A yolov4-tiny (width 1/8, 64x64) cfg and random weights, without compiling `init`."""
    from yolov4_jax import darknet
    from yolov4_jax.models import yolov4_tiny_layers

    cfg, weights = folder / f"tiny{num_classes}.cfg", folder / f"tiny{num_classes}.weights"
    layers = yolov4_tiny_layers(num_classes=num_classes, width=0.125)
    cfg.write_text(darknet.format_cfg({"width": 64, "height": 64, "channels": 3}, layers))
    model = darknet.model_from_cfg(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    rng = np.random.default_rng(0)

    def draw(path, shape):
        name = jax.tree_util.keystr(path)
        if "var" in name:
            return rng.uniform(0.5, 1.5, shape.shape)
        if "kernel" in name:
            return rng.normal(0, 1 / np.sqrt(np.prod(shape.shape[:-1])), shape.shape)
        return rng.normal(0, 0.1, shape.shape)

    darknet.save(model, jax.tree_util.tree_map_with_path(draw, shapes), weights)
    return str(cfg), str(weights)


def test_cli_run_with_darknet_files(config, tmp_path):
    from yolov4_jax import evaluate as evaluate_cli

    cfg, weights = write_darknet_files(tmp_path, num_classes=5)  # the synthetic classes
    metrics = evaluate_cli.run(config, cfg=cfg, weights=weights, max_batches=1)
    assert metrics["num_images"] == 5 and metrics["num_detections"] > 0
    assert 0.0 <= metrics["AP"] <= 1.0
    table = evaluate_cli.format_metrics(metrics)
    assert "AP50" in table and "5 images" in table
    out = tmp_path / "metrics.json"
    evaluate_cli.write_json(metrics, str(out))
    assert json.loads(out.read_text())["num_images"] == 5

    cfg, weights = write_darknet_files(tmp_path, num_classes=3)
    with pytest.raises(ValueError, match="predicts 3 classes"):
        evaluate_cli.run(config, cfg=cfg, weights=weights)
