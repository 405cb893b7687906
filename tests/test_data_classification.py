"""Classification data for backbone pretraining: mixing weights, iterators, datasets, prepare."""

from __future__ import annotations

import collections
import importlib.util
import math
import os

import cv2
import ml_collections
import numpy as np
import pytest

from yolov4_jax import data
from yolov4_jax.data import classification as cls
from yolov4_jax.data import formats, prepare, sources, synthetic
from yolov4_jax.data.augment import AugmentParams

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def base_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("base", os.path.join(ROOT, "configs", "base.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture
def config(tiny_cls_data_dir) -> ml_collections.ConfigDict:
    c = base_config()
    c.data.name = "yolov4_synthetic_cls/tiny"
    c.data.data_dir = tiny_cls_data_dir
    c.data.image_size = 64
    c.data.batch_size = 4
    c.data.mosaic = c.data.cutmix = c.data.mixup = True
    return c


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def assert_same(a: list[dict], b: list[dict]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def solid(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


# --- Pure mixing functions with explicit geometry.


def test_cutmix_weight_is_the_patch_pixel_area() -> None:
    # A 16x20 (h x w) canvas, patch x in [3, 13), y in [5, 9): 10 * 4 = 40 of 320 pixels.
    image, weights = cls.cutmix(solid(16, 20, 0), solid(16, 20, 255), (3, 5, 13, 9))
    assert (image[..., 0] == 255).sum() == 40
    assert (image[5:9, 3:13] == 255).all()
    np.testing.assert_allclose(weights, [280 / 320, 40 / 320])
    target = cls.mix_target([2, 7], weights, 10)
    np.testing.assert_allclose(target[[2, 7]], [0.875, 0.125], rtol=1e-6)
    assert target.sum() == pytest.approx(1.0) and target.dtype == np.float32


def test_cutmix_patch_sides_and_weights_over_random_draws() -> None:
    for seed in range(50):
        rng = np.random.default_rng(seed)
        x0, y0, x1, y1 = cls.cutmix_patch(rng, (50, 40), 0.3, 0.8)
        assert 12 <= x1 - x0 <= 32 and 15 <= y1 - y0 <= 40  # int(.3 * 40) ... int(.8 * 50)
        assert 0 <= x0 and x1 <= 40 and 0 <= y0 and y1 <= 50
        image, weights = cls.cutmix(solid(50, 40, 10), solid(50, 40, 200), (x0, y0, x1, y1))
        assert weights[1] == (image[..., 0] == 200).sum() / 2000
        assert weights.sum() == pytest.approx(1.0)


def test_mosaic_weights_are_the_quadrant_pixel_areas() -> None:
    # Cut at x=7, y=5 on a 16x20 canvas: quadrants 7x5, 13x5, 7x11, 13x11 of 320 pixels.
    # The images have other sizes: each is resized to fill its quadrant.
    images = [solid(30, 30, 10), solid(8, 9, 60), solid(11, 7, 120), solid(40, 3, 240)]
    image, weights = cls.mosaic(images, (16, 20), (7, 5))
    np.testing.assert_allclose(weights, np.array([35, 65, 77, 143]) / 320)
    for value, w in zip([10, 60, 120, 240], weights, strict=True):
        assert (image[..., 0] == value).sum() == w * 320
    assert (image[:5, :7] == 10).all() and (image[5:, 7:] == 240).all()
    # Labels that repeat add up.
    target = cls.mix_target([4, 1, 4, 0], weights, 5)
    np.testing.assert_allclose(target, np.array([143, 65, 0, 0, 35 + 77]) / 320, rtol=1e-6)


def test_mosaic_cut_range() -> None:
    cuts = [cls.mosaic_cut(np.random.default_rng(s), (100, 50), 0.2, 0.8) for s in range(200)]
    xs, ys = np.array(cuts).T
    assert xs.min() >= 10 and xs.max() < 40 and ys.min() >= 20 and ys.max() < 80
    assert xs.max() - xs.min() > 20  # spread over the range


def test_mixup_is_half_and_half() -> None:
    image, weights = cls.mixup(solid(8, 8, 100), solid(8, 8, 200))
    assert (image == 150).all()
    np.testing.assert_array_equal(weights, [0.5, 0.5])
    p = AugmentParams(jitter=0.0, flip=False, hue=0.0, saturation=1.0, exposure=1.0)
    rng = np.random.default_rng(0)
    image, weights = cls.augment_and_mix(
        rng, [solid(20, 30, 0), solid(10, 10, 255)], (16, 16), p, "mixup"
    )
    assert image.shape == (16, 16, 3) and (np.abs(image.astype(int) - 127) <= 1).all()
    np.testing.assert_allclose(cls.mix_target([3, 1], weights, 4), [0, 0.5, 0, 0.5])


def test_augment_and_mix_mosaic_weights_follow_the_pixels() -> None:
    p = AugmentParams(jitter=0.2, flip=True, hue=0.0, saturation=1.0, exposure=1.0)
    values = [0, 80, 160, 240]
    for seed in range(10):
        images = [solid(40, 50, v) for v in values]
        image, weights = cls.augment_and_mix(
            np.random.default_rng(seed), images, (32, 48), p, "mosaic"
        )
        counts = [(image[..., 0] == v).sum() for v in values]
        np.testing.assert_allclose(weights, np.array(counts) / (32 * 48))


def test_choose_mix_alternates_mosaic_and_cutmix() -> None:
    def draws(**kw) -> collections.Counter:
        p = AugmentParams(**{"mosaic_prob": 0.0, "cutmix_prob": 0.0, "mixup_prob": 0.0, **kw})
        rng = np.random.default_rng(0)
        return collections.Counter(cls.choose_mix(rng, p) for _ in range(2000))

    both = draws(mosaic_prob=1.0, cutmix_prob=1.0, mixup_prob=1.0)
    assert set(both) == {"mosaic", "cutmix"} and abs(both["mosaic"] - 1000) < 100
    half = draws(mosaic_prob=0.5, cutmix_prob=0.5)
    assert set(half) == {"mosaic", "cutmix", "none"} and abs(half["none"] - 1000) < 100
    assert abs(half["mosaic"] - half["cutmix"]) < 120
    # MixUp only for samples that are not mixed otherwise.
    rest = draws(cutmix_prob=0.5, mixup_prob=1.0)
    assert set(rest) == {"cutmix", "mixup"} and abs(rest["mixup"] - 1000) < 100
    assert set(draws(mosaic_prob=1.0)) == {"mosaic"} and set(draws()) == {"none"}


# --- Darknet's classifier crop (image.c::random_augment_image).


def smooth_image(h: int, w: int) -> np.ndarray:
    """Slowly varying colours: bilinear resampling changes them by well under a grey level."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), (xx + yy) % 256]
    return np.stack(rgb, axis=-1).astype(np.uint8)


def test_classifier_crop_without_rotation_or_squeeze_is_a_resize() -> None:
    # r = the canvas side on a square image: the scaled image fits the canvas exactly (no
    # shift to draw), so the crop is a plain resize, whatever the seed.
    image = smooth_image(96, 96)
    want = cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR)
    c = cls.CropParams(min_crop=64, max_crop=64, aspect=1.0, angle=0.0)
    for seed in range(3):
        out = cls.random_augment_image(np.random.default_rng(seed), image, (64, 64), c)
        assert np.abs(out.astype(int) - want).max() <= 1
    # r = the image's shorter side: scale 1; centred, the crop is the middle 64 columns.
    image = np.random.default_rng(0).integers(0, 256, (64, 100, 3), dtype=np.uint8)
    c = cls.CropParams(min_crop=64, max_crop=64)
    args = cls.random_crop_args(np.random.default_rng(0), (64, 100), (64, 64), c)
    assert (args.rad, args.scale, args.aspect, args.dy) == (0.0, 1.0, 1.0, 0.0)
    assert abs(args.dx) <= 18  # half of the 36 columns that overhang
    centred = args._replace(dx=0.0)
    np.testing.assert_array_equal(cls.rotate_crop_image(image, centred, (64, 64)), image[:, 18:82])
    # A whole-pixel shift moves the window by that many source pixels.
    np.testing.assert_array_equal(
        cls.rotate_crop_image(image, args._replace(dx=-7.0), (64, 64)), image[:, 11:75]
    )


def test_classifier_crop_rotates_and_squeezes_by_the_drawn_amounts() -> None:
    # A 90 px wide vertical red stripe on grey. Its centre in each output row (weighted by
    # redness, for sub-pixel precision) moves tan(rad) px right per row down (darknet's
    # rotate_crop_image: rx = cos(rad) u - sin(rad) v), and its width is 90 * scale / aspect.
    image = np.full((300, 300, 3), 100, np.uint8)
    image[:, 105:195] = (255, 0, 0)
    rows, xs = np.arange(32, 96), np.arange(128)

    def stripe(out: np.ndarray) -> tuple[float, float]:
        redness = np.clip(out[rows, :, 0].astype(float) - out[rows, :, 1], 0, None) / 255
        centre = (redness * xs).sum(axis=1) / redness.sum(axis=1)
        return np.polyfit(rows, centre, 1)[0], float(redness.sum(axis=1).mean())

    rotate = cls.CropParams(min_crop=128, max_crop=128, angle=7.0)
    angles = []
    for seed in range(8):
        args = cls.random_crop_args(np.random.default_rng(seed), (300, 300), (128, 128), rotate)
        out = cls.random_augment_image(np.random.default_rng(seed), image, (128, 128), rotate)
        slope, _ = stripe(out)
        assert math.degrees(math.atan(slope)) == pytest.approx(math.degrees(args.rad), abs=0.3)
        angles.append(math.degrees(args.rad))
    assert max(angles) > 3 and min(angles) < -3 and max(map(abs, angles)) <= 7
    squeeze = cls.CropParams(min_crop=128, max_crop=128, aspect=0.75)
    aspects = []
    for seed in range(8):
        args = cls.random_crop_args(np.random.default_rng(seed), (300, 300), (128, 128), squeeze)
        out = cls.random_augment_image(np.random.default_rng(seed), image, (128, 128), squeeze)
        slope, width = stripe(out)
        assert abs(slope) < 1e-3
        # Within a pixel: shrinking by 2 and more, bilinear sampling rounds each edge.
        assert width == pytest.approx(90 * args.scale / args.aspect, abs=1.0)
        aspects.append(args.aspect)
    assert min(aspects) < 0.9 and max(aspects) > 1.1  # both sides of 1 (wider and narrower)


def test_classifier_crop_shape_dtype_determinism() -> None:
    c = cls.CropParams(min_crop=32, max_crop=112, aspect=0.75, angle=7.0)
    rng = np.random.default_rng(0)
    for seed in range(20):
        h, w = (int(v) for v in rng.integers(8, 300, size=2))
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        out = cls.random_augment_image(np.random.default_rng(seed), image, (64, 64), c)
        assert out.shape == (64, 64, 3) and out.dtype == np.uint8
        again = cls.random_augment_image(np.random.default_rng(seed), image, (64, 64), c)
        np.testing.assert_array_equal(out, again)
        other = cls.random_augment_image(np.random.default_rng(seed + 100), image, (64, 64), c)
        assert not np.array_equal(out, other)
        quadrant = cls.random_augment_image(
            np.random.default_rng(seed), image, (64, 64), c, (20, 41)
        )
        assert quadrant.shape == (20, 41, 3) and quadrant.dtype == np.uint8
    # A Mosaic quadrant shows the whole canvas's crop, stretched to the quadrant.
    image = smooth_image(90, 120)
    for seed in range(5):
        full = cls.random_augment_image(np.random.default_rng(seed), image, (64, 64), c)
        quadrant = cls.random_augment_image(
            np.random.default_rng(seed), image, (64, 64), c, (20, 40)
        )
        want = cv2.resize(full, (40, 20), interpolation=cv2.INTER_LINEAR)
        assert np.abs(quadrant.astype(int) - want).mean() < 3


def test_classifier_crop_config_errors(config) -> None:
    assert cls.crop_params(config) == cls.CropParams()  # off by default
    for field, value, match in [
        ("min_crop", -1, r"config.data.min_crop=-1: expected 0 \(off"),
        ("max_crop", 100, r"config.data.max_crop=100: expected at least config.data.min_crop"),
        ("aspect", 0.0, r"config.data.aspect=0.0: expected a positive factor"),
        ("aspect", float("nan"), r"config.data.aspect=nan: expected a positive factor"),
        ("angle", -7.0, r"config.data.angle=-7.0: expected the largest rotation in degrees"),
    ]:
        bad = config.copy_and_resolve_references()
        bad.data.min_crop, bad.data.max_crop = 128, 448
        bad.data[field] = value
        with pytest.raises(ValueError, match=match):
            data.create_classification_train_iterator(bad, seed=0)
    config.data.min_crop, config.data.max_crop, config.data.aspect = 128, 448, 0.75
    assert cls.crop_params(config) == cls.CropParams(128, 448, 0.75, 0.0)


# --- The embedded dataset and DatasetInfo.


def test_tiny_dataset_has_ten_balanced_classes(tiny_cls_data_dir, tiny_data_dir) -> None:
    builder = sources.load_builder("yolov4_synthetic_cls/tiny", tiny_cls_data_dir)
    info = sources.dataset_info_from_builder(builder)
    assert info.task == "classification" and info.num_classes == 10
    assert info.class_names == synthetic.CLS_CLASS_NAMES
    assert info.class_names[:2] == ("circle_warm", "circle_cool")
    assert info.split_sizes == {"train": 40, "validation": 20}
    assert set(builder.info.features.keys()) == {"image", "image/id", "image/filename", "label"}
    for split, per_class in (("train", 4), ("validation", 2)):
        source = sources.open_split(builder, split)
        labels = []
        for k in range(len(source)):
            image, label = sources.decode_classification(source[k])
            assert 64 <= min(image.shape[:2]) and max(image.shape[:2]) <= 96
            labels.append(label)
        assert collections.Counter(labels) == {c: per_class for c in range(10)}
    detection = sources.load_builder("yolov4_synthetic/tiny", tiny_data_dir)
    assert sources.dataset_info_from_builder(detection).task == "detection"


def test_synthetic_classification_images() -> None:
    a = synthetic.render_classification_image(np.random.default_rng(3), 5, 64, 96)
    b = synthetic.render_classification_image(np.random.default_rng(3), 5, 64, 96)
    np.testing.assert_array_equal(a, b)
    # The dominant shape's hue follows its colour family: count strongly saturated pixels
    # whose hue is in the warm (red..amber) or the cool (green..blue) range.
    for label in range(10):
        warm = cool = 0
        for seed in range(5):
            rng = np.random.default_rng([label, seed])
            image = synthetic.render_classification_image(rng, label, 64, 96)
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).reshape(-1, 3)
            hue = hsv[hsv[:, 1] >= 160, 0].astype(int)
            warm += ((hue <= 30) | (hue >= 174)).sum()
            cool += ((hue >= 55) & (hue <= 125)).sum()
        assert (warm > cool) == (label % 2 == 0), (label, warm, cool)


def test_dataset_info_through_the_config(config) -> None:
    info = data.dataset_info(config)
    assert info.task == "classification" and info.num_classes == 10


# --- Iterators.


def test_train_batch_contract(config) -> None:
    for batch in take(data.create_classification_train_iterator(config, seed=0), 3):
        assert set(batch) == {"image", "label", "target"}
        assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
        assert batch["target"].shape == (4, 10) and batch["target"].dtype == np.float32
        np.testing.assert_allclose(batch["target"].sum(axis=1), 1.0, rtol=1e-6)
        assert (batch["target"] >= 0).all()
        # The base image always keeps a share (CutMix patch <= 64%, Mosaic quadrant >= 1 px).
        assert (batch["target"][np.arange(4), batch["label"]] > 0).all()


def test_unmixed_targets_are_one_hot_and_cutmix_weights_are_patch_areas(config) -> None:
    config.data.mosaic = config.data.mixup = False
    config.data.cutmix_prob = 1.0
    batches = take(data.create_classification_train_iterator(config, seed=1), 4)
    mixed = 0
    for b in batches:
        for label, target in zip(b["label"], b["target"], strict=True):
            if np.count_nonzero(target) == 1:
                assert target[label] == 1.0  # both images of the same class
                continue
            mixed += 1
            patch = 1.0 - target[label]
            pixels = patch * 64 * 64  # sides in [int(.3 * 64), int(.8 * 64)] = [19, 51]
            assert pixels == pytest.approx(round(pixels), abs=2e-3)
            n = round(pixels)
            assert any(n % s == 0 and 19 <= n // s <= 51 for s in range(19, 52))
    assert mixed >= 8
    config.data.cutmix = False
    for b in take(data.create_classification_train_iterator(config, seed=1), 2):
        np.testing.assert_array_equal(b["target"], np.eye(10, dtype=np.float32)[b["label"]])


def test_mixup_targets_are_half_and_half(config) -> None:
    config.data.mosaic = config.data.cutmix = False
    config.data.mixup_prob = 1.0

    def mixed_rows(seed):
        rows = [t for b in take(data.create_classification_train_iterator(config, seed=seed), 2)
                for t in b["target"]]  # fmt: skip
        for target in rows:
            assert sorted(target[target > 0].tolist()) in ([0.5, 0.5], [1.0])
        return sum(len(t[t > 0]) == 2 for t in rows), len(rows)

    # Every row is a MixUp; only a pair of one class (1 in 5 with five classes) reads [1.0].
    mixed, total = mixed_rows(2)
    assert mixed >= total // 2
    config.data.mixup = False
    assert mixed_rows(2)[0] == 0  # the control: no mixing, no half-and-half rows


def test_deterministic_per_seed_and_resumable(config) -> None:
    first = take(data.create_classification_train_iterator(config, seed=3), 3)
    assert_same(first, take(data.create_classification_train_iterator(config, seed=3), 3))
    other = next(data.create_classification_train_iterator(config, seed=4))
    assert not np.array_equal(first[0]["image"], other["image"])
    it = data.create_classification_train_iterator(config, seed=3)
    take(it, 2)
    state = it.get_state()
    resumed = data.create_classification_train_iterator(config, seed=3)
    resumed.set_state(state)
    assert_same(first[2:], take(resumed, 1))


def test_train_iterator_with_the_classifier_crop(config) -> None:
    config.data.min_crop, config.data.max_crop = 32, 112
    config.data.aspect, config.data.angle = 0.75, 7.0
    first = take(data.create_classification_train_iterator(config, seed=6), 2)
    for batch in first:  # Mosaic, CutMix and MixUp on, as in test_train_batch_contract
        assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.uint8
        np.testing.assert_allclose(batch["target"].sum(axis=1), 1.0, rtol=1e-6)
    assert_same(first, take(data.create_classification_train_iterator(config, seed=6), 2))
    # r = 16 on a 64 px canvas: the 64-96 px images shrink to at most 16 x 24 in the middle
    # (no overhang, so no shift) and the rest is black, unlike the jitter crop's mean colour.
    config.data.mosaic = config.data.cutmix = config.data.mixup = False
    config.data.min_crop = config.data.max_crop = 16
    config.data.aspect, config.data.angle = 1.0, 0.0
    for batch in take(data.create_classification_train_iterator(config, seed=6), 2):
        images = batch["image"]
        assert not images[:, :19].any() and not images[:, 45:].any()
        assert not images[:, :, :19].any() and not images[:, :, 45:].any()
        assert (images[:, 30:34, 30:34].max(axis=(1, 2, 3)) > 0).all()


def test_worker_process_gives_the_same_batches(config) -> None:
    config.data.workers = 1
    with_worker = take(data.create_classification_train_iterator(config, seed=5), 2)
    config.data.workers = 0
    assert_same(with_worker, take(data.create_classification_train_iterator(config, seed=5), 2))


def test_an_epoch_visits_each_record_of_the_shard_once(config) -> None:
    config.data.mosaic = config.data.cutmix = config.data.mixup = False
    config.data.batch_size = 10  # 2 processes: 5 rows each; shards of 20 records = 4 steps
    seen = []
    for index in range(2):
        it = data.create_classification_train_iterator(
            config, seed=0, process_index=index, process_count=2
        )
        seen.append(np.concatenate([b["label"] for b in take(it, 4)]))
        assert len(seen[-1]) == 20
    # Every label appears 4 times in the 40 training records.
    assert collections.Counter(np.concatenate(seen).tolist()) == {c: 4 for c in range(10)}
    with pytest.raises(ValueError, match="multiple of 4"):
        data.create_classification_train_iterator(config, seed=0, batch_multiple=4)


def test_eval_pass_covers_each_record_once(config) -> None:
    config.data.batch_size = 6  # 20 records: 4 batches, the last with 4 padding rows
    config.data.eval_image_size = 48
    batches = list(data.create_classification_eval_iterator(config))
    assert len(batches) == data.num_classification_eval_batches(config, 20) == 4
    for b in batches:
        assert set(b) == {"image", "label", "valid"}
        assert b["image"].shape == (6, 48, 48, 3) and b["label"].dtype == np.int32
    valid = np.concatenate([b["valid"] for b in batches])
    assert valid.sum() == 20 and valid[:20].all() and not valid[20:].any()
    last = batches[-1]
    assert not last["image"][~last["valid"]].any() and not last["label"][~last["valid"]].any()
    builder = sources.load_builder(config.data.name, config.data.data_dir)
    source = sources.open_split(builder, "validation")
    want = [sources.decode_classification(source[k]) for k in range(20)]
    labels = np.concatenate([b["label"] for b in batches])[:20]
    np.testing.assert_array_equal(labels, [label for _, label in want])
    image0 = cv2.resize(want[0][0], (48, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batches[0]["image"][0], image0)
    # Split over two processes: 3 rows each of every global batch, the same number of batches.
    parts = []
    for index in range(2):
        it = data.create_classification_eval_iterator(config, process_index=index, process_count=2)
        parts.append(list(it))
        assert len(parts[-1]) == 4 and parts[-1][0]["image"].shape[0] == 3
    for key in ("label", "image"):
        rows = [b[key][b["valid"]] for pair in zip(*parts, strict=True) for b in pair]
        np.testing.assert_array_equal(
            np.concatenate(rows), np.concatenate([b[key][b["valid"]] for b in batches])
        )


def test_wrong_task_and_bad_records_give_clear_errors(config, tiny_data_dir) -> None:
    detection = config.copy_and_resolve_references()
    detection.data.name = "yolov4_synthetic/tiny"
    detection.data.data_dir = tiny_data_dir
    with pytest.raises(ValueError, match="'yolov4_synthetic/tiny' is a detection dataset"):
        data.create_classification_train_iterator(detection, seed=0)
    with pytest.raises(ValueError, match="needs a classification dataset"):
        data.create_classification_eval_iterator(detection)
    with pytest.raises(ValueError, match="'yolov4_synthetic_cls/tiny' is a classification"):
        data.create_train_iterator(config, seed=0)

    builder_dir = str(sources.load_builder(config.data.name, config.data.data_dir).data_dir)
    t = cls._EvalBatches(
        config,
        builder_dir,
        "validation",
        num_records=2,
        num_classes=10,
        process_index=0,
        process_count=1,
    )
    t._source = [{"image": b"not an image", "label": 1}, {"image": b"", "label": 12}]
    with pytest.raises(ValueError, match=f"{builder_dir} split validation record 0: undecodable"):
        t.read(0)
    ok = cv2.imencode(".png", solid(8, 8, 9))[1].tobytes()
    t._source[1]["image"] = ok
    with pytest.raises(ValueError, match=r"record 1: label 12 outside \[0, 10\)"):
        t.read(1)


# --- prepare --format folder.


def _class_folder(root: str, rng: np.random.Generator, per_class: dict[str, int]) -> dict:
    """PNG images (lossless) in one subfolder per class; returns {relative path: RGB image}."""
    written = {}
    for name, count in per_class.items():
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(count):
            h, w = int(rng.integers(20, 40)), int(rng.integers(20, 40))
            rgb = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
            rel = os.path.join(name, f"img_{i}.png")
            cv2.imwrite(os.path.join(root, rel), rgb[..., ::-1])
            written[rel] = rgb
    return written


def test_prepare_folder_round_trip_and_iterators(tmp_path, config) -> None:
    rng = np.random.default_rng(0)
    # Subfolders created out of order: labels follow the sorted names.
    train = _class_folder(str(tmp_path / "train"), rng, {"eel": 3, "cat": 4, "dog": 3})
    val = _class_folder(str(tmp_path / "val"), rng, {"dog": 2, "cat": 1})  # no "eel": fine
    os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")  # hidden: ignored
    data_dir = str(tmp_path / "tfds")
    args = ["--format", "folder", "--images", str(tmp_path / "train"), "--val-images"]
    args += [str(tmp_path / "val"), "--name", "my_classes", "--data-dir", data_dir]
    assert prepare.main(args) == 0
    builder = sources.load_builder("my_classes", data_dir)
    info = sources.dataset_info_from_builder(builder)
    assert info.task == "classification" and info.class_names == ("cat", "dog", "eel")
    assert info.split_sizes == {"train": 10, "validation": 3}
    label_of = {"cat": 0, "dog": 1, "eel": 2}
    for split, written in (("train", train), ("validation", val)):
        source = sources.open_split(builder, split)
        assert len(source) == len(written)
        for k in range(len(source)):
            record = source[k]
            rel = record["image/filename"].decode()
            image, label = sources.decode_classification(record)
            np.testing.assert_array_equal(image, written[rel])
            assert label == label_of[rel.split(os.sep)[0]]

    config.data.name, config.data.data_dir = "my_classes", data_dir
    batch = next(data.create_classification_train_iterator(config, seed=0))
    assert batch["target"].shape == (4, 3)
    assert sum(b["valid"].sum() for b in data.create_classification_eval_iterator(config)) == 3


def test_prepare_folder_bad_inputs(tmp_path, capsys) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "images"
    _class_folder(str(root), rng, {"a": 3, "b": 3})
    corrupt = root / "b" / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    data_dir = str(tmp_path / "tfds")
    args = ["--format", "folder", "--images", str(root), "--val-fraction", "0.3"]
    args += ["--name", "folder_bad", "--data-dir", data_dir]
    assert prepare.main(args) == 1
    err = capsys.readouterr().err
    assert str(corrupt) in err and formats.UNREADABLE_IMAGE in err and "--skip-bad" in err
    assert not os.path.exists(os.path.join(data_dir, "folder_bad"))

    (root / "stray.png").write_bytes(cv2.imencode(".png", solid(9, 9, 5))[1].tobytes())
    report = prepare.prepare(
        format="folder",
        images=str(root),
        name="folder_bad",
        data_dir=data_dir,
        val_fraction=0.3,
        skip_bad=True,
    )
    assert report.counts() == {formats.UNREADABLE_IMAGE: 1, formats.UNKNOWN_CATEGORY: 1}
    assert report.split_sizes == {"train": 4, "validation": 2} and report.empty_images == 0
    assert any(str(root / "stray.png") in str(p) for p in report.problems)

    with pytest.raises(formats.DataError, match="no class subfolders"):
        prepare.prepare(format="folder", images=str(root / "a"), name="x", data_dir=data_dir)
    os.makedirs(tmp_path / "val" / "zebra")
    with pytest.raises(formats.DataError, match=r"\['zebra'\] are not among the training"):
        prepare.prepare(
            format="folder",
            images=str(root),
            val_images=str(tmp_path / "val"),
            name="x",
            data_dir=data_dir,
            skip_bad=True,
        )
    with pytest.raises(formats.DataError, match="--names do not apply"):
        prepare.prepare(
            format="folder", images=str(root), names="n.txt", name="x", data_dir=data_dir
        )
