"""Augmentations: boxes follow the pixels, flags do what they say, results depend on the seed."""

from __future__ import annotations

import numpy as np
import pytest

from configs import base
from yolov4_jax.data import augment, pipeline
from yolov4_jax.data.augment import AugmentParams, Sample

# Solid, well-separated colours; HSV changes them, so colour checks with HSV on use `HSV_TWIN`.
COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]], np.uint8
)
GEOMETRY_ONLY = dict(hue=0.0, saturation=1.0, exposure=1.0)


def coloured_sample(rng: np.random.Generator, height: int = 96, width: int = 128) -> Sample:
    """A black image with up to 6 disjoint solid rectangles; label = colour index."""
    image = np.zeros((height, width, 3), np.uint8)
    boxes, labels = [], []
    cols, rows = 3, 2
    for k in range(len(COLOURS)):
        if rng.random() < 0.2:
            continue
        cx0, cy0 = (k % cols) * width // cols, (k // cols) * height // rows
        cw, chh = width // cols, height // rows
        w, h = rng.integers(cw // 3, cw - 2), rng.integers(chh // 3, chh - 2)
        x0, y0 = cx0 + rng.integers(1, cw - w), cy0 + rng.integers(1, chh - h)
        image[y0 : y0 + h, x0 : x0 + w] = COLOURS[k]
        boxes.append([x0, y0, x0 + w, y0 + h])
        labels.append(k)
    return Sample(image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int32))


def colour_fraction(
    sample: Sample, k: int, ignore: np.ndarray | None = None
) -> tuple[float, float]:
    """(fraction of box ``k``'s inner pixels of its colour, fraction of that colour inside it).

    Pixels where ``ignore`` is True (another image's, see `_parts`) are left out of the first.
    """
    x0, y0, x1, y1 = sample.boxes[k]
    colour = COLOURS[sample.labels[k]].astype(int)
    match = np.all(np.abs(sample.image.astype(int) - colour) < 60, axis=-1)
    # Shrink by 1.5 px: bilinear resampling blurs the border pixels.
    ix0, iy0 = int(np.ceil(x0 + 1.5)), int(np.ceil(y0 + 1.5))
    ix1, iy1 = int(np.floor(x1 - 1.5)), int(np.floor(y1 - 1.5))
    inner = match[iy0:iy1, ix0:ix1]
    if ignore is not None:
        inner = inner[~ignore[iy0:iy1, ix0:ix1]]
    inside = inner.mean() if inner.size else 1.0
    ox0, oy0 = max(int(np.floor(x0 - 1.5)), 0), max(int(np.floor(y0 - 1.5)), 0)
    grown = match[oy0 : int(np.ceil(y1 + 1.5)), ox0 : int(np.ceil(x1 + 1.5))].sum()
    return float(inside), float(grown / max(match.sum(), 1))


def assert_boxes_follow_pixels(
    sample: Sample, min_inside: float = 0.97, ignore: np.ndarray | None = None
) -> None:
    h, w = sample.image.shape[:2]
    assert sample.boxes.dtype == np.float32 and sample.labels.dtype == np.int32
    assert sample.boxes.shape == (len(sample.labels), 4)
    assert np.all(sample.boxes >= 0) and np.all(sample.boxes[:, [0, 2]] <= w)
    assert np.all(sample.boxes[:, [1, 3]] <= h)
    assert np.all(sample.boxes[:, 2:] > sample.boxes[:, :2])
    for k in range(len(sample.labels)):
        if min(sample.boxes[k, 2:] - sample.boxes[k, :2]) < 4:
            continue  # too thin to have inner pixels after blurring
        inside, _ = colour_fraction(sample, k, ignore)
        assert inside >= min_inside, (k, sample.boxes[k], inside)


def assert_every_colour_is_boxed(sample: Sample) -> None:
    """Each colour blob that is visible (more than a sliver) has a box of its colour around it."""
    for c in range(len(COLOURS)):
        match = np.all(np.abs(sample.image.astype(int) - COLOURS[c].astype(int)) < 60, axis=-1)
        if match.sum() < 30:
            continue
        covered = np.zeros_like(match)
        for box, label in zip(sample.boxes, sample.labels, strict=True):
            if label == c:
                x0, y0, x1, y1 = box
                covered[
                    max(int(y0) - 2, 0) : int(np.ceil(y1)) + 2,
                    max(int(x0) - 2, 0) : int(np.ceil(x1)) + 2,
                ] = True
        assert (match & ~covered).sum() <= 0.03 * match.sum() + 8, c


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("letterbox", [False, True])
def test_single_image_boxes_follow_pixels(flip: bool, letterbox: bool) -> None:
    p = AugmentParams(flip=flip, letterbox=letterbox, mosaic_prob=0.0, **GEOMETRY_ONLY)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        out = augment.augment_single(rng, coloured_sample(rng), (64, 96), p)
        assert out.image.shape == (64, 96, 3) and out.image.dtype == np.uint8
        assert_boxes_follow_pixels(out)
        assert_every_colour_is_boxed(out)


def test_mosaic_boxes_follow_pixels() -> None:
    p = AugmentParams(mosaic_prob=1.0, **GEOMETRY_ONLY)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        samples = [coloured_sample(rng, 80 + 8 * i, 120 - 8 * i) for i in range(4)]
        out = augment.mosaic(rng, samples, (96, 96), p)
        assert out.image.shape == (96, 96, 3)
        assert_boxes_follow_pixels(out)
        assert_every_colour_is_boxed(out)


def test_mosaic_cut_point_within_bounds() -> None:
    """Four images, one per quadrant: each quadrant is a solid colour, its edges lie in [.2, .8]."""
    p = AugmentParams(jitter=0.0, flip=False, **GEOMETRY_ONLY)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        samples = [
            Sample(np.full((40, 40, 3), COLOURS[i], np.uint8), *augment.empty_boxes())
            for i in range(4)
        ]
        out = augment.mosaic(rng, samples, (100, 100), p).image
        top_left = np.all(out == COLOURS[0], axis=-1)
        cut_x, cut_y = top_left[0].sum(), top_left[:, 0].sum()
        assert 20 <= cut_x <= 80 and 20 <= cut_y <= 80
        assert np.all(out[-1, -1] == COLOURS[3]) and np.all(out[0, -1] == COLOURS[1])
        assert np.all(out[-1, 0] == COLOURS[2])


def test_cutmix_boxes_follow_pixels() -> None:
    p = AugmentParams(cutmix_min_visible=0.5, **GEOMETRY_ONLY)
    for seed in range(12):
        rng = np.random.default_rng(seed)
        a = augment.augment_single(rng, coloured_sample(rng), (96, 96), p)
        b_raw = coloured_sample(rng)
        # Distinct colours for b's objects so the two images are told apart.
        b_img = b_raw.image[..., ::-1].copy()
        perm = {0: 2, 1: 1, 2: 0, 3: 4, 4: 3, 5: 5}  # RGB reversal maps colour k to perm[k]
        b = augment.augment_single(
            rng, Sample(b_img, b_raw.boxes, np.array([perm[k] for k in b_raw.labels])), (96, 96), p
        )
        out = augment.cutmix(rng, a, b, p)
        assert_boxes_follow_pixels(out, min_inside=0.45)


def test_cutmix_drops_hidden_boxes_and_clips_sides() -> None:
    p = AugmentParams(cutmix_min_size=0.5, cutmix_max_size=0.5, cutmix_min_visible=0.3)
    image = np.zeros((100, 100, 3), np.uint8)
    a = Sample(image, np.array([[0, 0, 100, 100], [10, 10, 20, 20]], np.float32), np.array([0, 1]))
    b = Sample(image + 9, np.array([[0, 0, 100, 100]], np.float32), np.array([2]))
    rng = np.random.default_rng(0)
    out = augment.cutmix(rng, a, b, p)
    patch = np.argwhere(out.image[..., 0] == 9)
    (py0, px0), (py1, px1) = patch.min(0), patch.max(0) + 1
    assert (py1 - py0, px1 - px0) == (50, 50)
    # b's full-image box becomes the patch; a's small box survives only if outside the patch.
    b_box = out.boxes[out.labels == 2]
    np.testing.assert_allclose(b_box, [[px0, py0, px1, py1]])
    small_hidden = px0 <= 10 and px1 >= 20 and py0 <= 10 and py1 >= 20
    assert (1 in out.labels) != small_hidden
    assert 0 in out.labels  # 75% of the big box is still visible

    # A patch spanning a box's full height shrinks it from the covered side.
    shrunk = augment._subtract_patch(np.array([[10, 10, 50, 50]], np.float32), (0, 0, 30, 60))
    np.testing.assert_allclose(shrunk, [[30, 10, 50, 50]])


def test_mixup_blends_and_unites_boxes() -> None:
    rng = np.random.default_rng(0)
    a, b = coloured_sample(rng, 64, 64), coloured_sample(rng, 64, 64)
    out = augment.mixup(a, b)
    np.testing.assert_allclose(out.image, (a.image.astype(int) + b.image) / 2, atol=1)
    assert len(out.boxes) == len(a.boxes) + len(b.boxes)


def test_hsv_keeps_geometry_and_changes_colour() -> None:
    rng = np.random.default_rng(0)
    sample = coloured_sample(rng)
    changed = 0
    for seed in range(5):
        out = augment.random_hsv(np.random.default_rng(seed), sample.image, 0.1, 1.5, 1.5)
        assert out.shape == sample.image.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out.max(-1) == 0, sample.image.max(-1) == 0)
        changed += int(np.abs(out.astype(int) - sample.image).max() > 0)
    assert changed >= 4
    same = augment.random_hsv(np.random.default_rng(0), sample.image, 0.0, 1.0, 1.0)
    np.testing.assert_array_equal(same, sample.image)


def test_flip_twice_is_identity() -> None:
    rng = np.random.default_rng(3)
    s = coloured_sample(rng, 64, 64)
    rect = (0.0, 0.0, 64.0, 64.0)
    img, boxes = augment.warp(s.image, s.boxes, rect, (64, 64), flip=True)
    img2, boxes2 = augment.warp(img, boxes, rect, (64, 64), flip=True)
    np.testing.assert_array_equal(img2, s.image)
    np.testing.assert_allclose(boxes2, s.boxes, atol=1e-5)
    np.testing.assert_array_equal(img, s.image[:, ::-1])


def test_clip_boxes_drops_small_and_mostly_cropped() -> None:
    boxes = np.array(
        [[-90, 0, 10, 10], [5, 5, 5.5, 9], [20, 20, 30, 30], [-5, 0, 15, 10]], np.float32
    )
    labels = np.arange(4, dtype=np.int32)
    kept, kept_labels = augment.clip_boxes(boxes, labels, 40, 40, 1.0, 0.2)
    np.testing.assert_array_equal(kept_labels, [2, 3])
    np.testing.assert_allclose(kept[1], [0, 0, 15, 10])
    _, kept_labels = augment.clip_boxes(boxes, labels, 40, 40, 1.0, 0.0)
    np.testing.assert_array_equal(kept_labels, [0, 2, 3])


@pytest.mark.parametrize("mix", ["none", "mosaic", "cutmix", "mixup"])
def test_augment_is_deterministic_per_seed(mix: str) -> None:
    p = AugmentParams()
    data_rng = np.random.default_rng(7)
    samples = [coloured_sample(data_rng) for _ in range(augment.num_images(mix))]
    outs = [augment.augment(np.random.default_rng(s), samples, (64, 64), p, mix) for s in (1, 1, 2)]
    np.testing.assert_array_equal(outs[0].image, outs[1].image)
    np.testing.assert_array_equal(outs[0].boxes, outs[1].boxes)
    assert not np.array_equal(outs[0].image, outs[2].image)


def test_choose_mix_frequencies() -> None:
    rng = np.random.default_rng(0)
    p = AugmentParams(mosaic_prob=0.5, cutmix_prob=0.5, mixup_prob=0.0)
    draws = [augment.choose_mix(rng, p) for _ in range(2000)]
    assert abs(draws.count("mosaic") / 2000 - 0.5) < 0.05
    assert abs(draws.count("cutmix") / 2000 - 0.25) < 0.05
    assert "mixup" not in draws
    off = AugmentParams(mosaic_prob=0.0)
    assert {augment.choose_mix(rng, off) for _ in range(50)} == {"none"}
    # darknet: mosaic=1 switches MixUp off altogether; without Mosaic, MixUp takes its share.
    both = AugmentParams(mosaic_prob=0.5, cutmix_prob=0.0, mixup_prob=0.5)
    assert "mixup" not in {augment.choose_mix(rng, both) for _ in range(200)}
    alone = AugmentParams(mosaic_prob=0.0, cutmix_prob=0.0, mixup_prob=0.5)
    draws = [augment.choose_mix(rng, alone) for _ in range(2000)]
    assert abs(draws.count("mixup") / 2000 - 0.5) < 0.05


def test_letterbox_keeps_aspect() -> None:
    image = np.full((50, 100, 3), 200, np.uint8)
    s = Sample(image, np.array([[0, 0, 100, 50]], np.float32), np.array([0], np.int32))
    out = augment.resize_to_canvas(s, (80, 80), letterbox=True)
    np.testing.assert_allclose(out.boxes, [[0, 20, 80, 60]], atol=1e-4)
    assert out.image[5, 40, 0] == augment.LETTERBOX_FILL and out.image[40, 40, 0] == 200
    stretched = augment.resize_to_canvas(s, (80, 80), letterbox=False)
    np.testing.assert_allclose(stretched.boxes, [[0, 0, 80, 80]], atol=1e-4)


# HSV on: darknet's yolov4.cfg values. Its twin draws exactly the same random numbers (a
# Generator's uniform takes one draw whatever its bounds) but its lookup tables are the identity:
# the same geometry with the colours kept, so the colour checks can run on the twin.
HSV_ON = dict(hue=0.1, saturation=1.5, exposure=1.5)
HSV_TWIN = dict(hue=1e-9, saturation=1 + 1e-9, exposure=1 + 1e-9)
OTHER = 128  # the pixels of the other images in `_parts`: no palette colour, not the background
# Flags on together -> the mixes a sample can draw (choose_mix: Mosaic switches MixUp off, as
# darknet's mosaic=1 does, so with Mosaic on MixUp is never drawn).
COMBINATIONS = {
    "none": (dict(), {"none"}),
    "mosaic": (dict(mosaic_prob=1.0), {"mosaic"}),
    "cutmix": (dict(cutmix_prob=1.0), {"cutmix"}),
    "mixup": (dict(mixup_prob=1.0), {"mixup"}),
    "mosaic+mixup": (dict(mosaic_prob=0.5, mixup_prob=1.0), {"mosaic", "none"}),
    "cutmix+mixup": (dict(cutmix_prob=0.5, mixup_prob=1.0), {"cutmix", "mixup"}),
    "all": (dict(mosaic_prob=0.4, cutmix_prob=0.5, mixup_prob=1.0), {"mosaic", "cutmix", "none"}),
}


def _draw_and_augment(seed: int, samples: list[Sample], p: AugmentParams) -> tuple[str, Sample]:
    """As the pipeline: one generator draws the mix, then augments (pipeline._TrainBatches)."""
    rng = np.random.default_rng(seed)
    mix = augment.choose_mix(rng, p)
    return mix, augment.augment(rng, samples[: augment.num_images(mix)], (96, 128), p, mix)


def _parts(seed: int, samples: list[Sample], p: AugmentParams, mix: str) -> list[Sample]:
    """Each source image of ``mix`` alone: the same draws with the others plain and boxless.

    The geometry depends only on the image sizes and the draws, so each part has the full
    result's geometry. The others are black for MixUp (the part is half the image) and `OTHER`
    grey otherwise (the pixels of other images, which the checks ignore).
    """
    n = augment.num_images(mix)
    fill = 0 if mix == "mixup" else OTHER
    parts = []
    for i in range(n):
        alone = [
            s if j == i else Sample(np.full_like(s.image, fill), *augment.empty_boxes())
            for j, s in enumerate(samples[:n])
        ]
        parts.append(_draw_and_augment(seed, alone, p)[1])
    return parts


def assert_same_geometry(out: Sample, twin: Sample) -> None:
    """HSV changes colours only: the same boxes, and objects and background where the twin's are."""
    np.testing.assert_array_equal(out.boxes, twin.boxes)
    np.testing.assert_array_equal(out.labels, twin.labels)
    value, twin_value = out.image.max(-1).astype(int), twin.image.max(-1)
    # HSV scales the value (max channel) by 1/1.5..1.5: black stays black and objects stay bright
    # (a MixUp blend's value is at least half its brighter image's: at least a third is left).
    assert np.all(value[twin_value < 8] < 16)
    assert np.all(value[twin_value > 150] > 45)


@pytest.mark.parametrize("hsv", [False, True], ids=["geometry", "hsv"])
@pytest.mark.parametrize("combination", COMBINATIONS)
def test_full_augment_combinations_follow_pixels(combination: str, hsv: bool) -> None:
    """Jitter, flip, HSV and the multi-image mixes together: every box covers its object.

    With HSV on, colours change, so the colour checks run on the HSV twin (same geometry) and the
    HSV result must match it in boxes and object positions. MixUp is split into its two images,
    each of whose boxes must cover its colours; the blend must be their sum.
    """
    probs, can_draw = COMBINATIONS[combination]
    flags = dict(jitter=0.3, flip=True, cutmix_min_visible=0.6, **{"mosaic_prob": 0.0, **probs})
    p = AugmentParams(**flags, **(HSV_ON if hsv else GEOMETRY_ONLY))
    twin_p = AugmentParams(**flags, **(HSV_TWIN if hsv else GEOMETRY_ONLY))
    drawn, recoloured = set(), 0
    for seed in range(10):
        data_rng = np.random.default_rng(100 + seed)
        samples = [coloured_sample(data_rng) for _ in range(4)]
        mix, out = _draw_and_augment(seed, samples, p)
        _, twin = _draw_and_augment(seed, samples, twin_p)
        drawn.add(mix)
        assert out.image.shape == (96, 128, 3)
        assert_same_geometry(out, twin)
        recoloured += not np.array_equal(out.image, twin.image)
        parts = _parts(seed, samples, twin_p, mix)
        np.testing.assert_array_equal(twin.boxes, np.concatenate([q.boxes for q in parts]))
        np.testing.assert_array_equal(twin.labels, np.concatenate([q.labels for q in parts]))
        if mix == "mixup":  # the blend is the sum of the halves (each rounded on its own)
            assert np.abs(twin.image - sum(q.image.astype(int) for q in parts)).max() <= 1
            parts = [
                Sample(np.minimum(2 * q.image.astype(int), 255).astype(np.uint8), *q[1:])
                for q in parts
            ]
        for i, part in enumerate(parts):
            others = None
            if mix != "mixup":  # each image's pixels are the result's where no other image shows
                others = np.all(part.image == OTHER, axis=-1)
                np.testing.assert_array_equal(part.image[~others], twin.image[~others])
            assert_boxes_follow_pixels(part, ignore=others)
            # CutMix drops the first image's boxes that the patch mostly hides.
            if not (mix == "cutmix" and i == 0):
                assert_every_colour_is_boxed(part)
    assert drawn == can_draw
    assert (recoloured >= 8) if hsv else (recoloured == 0)


def test_min_visible_drops_a_sliver_left_by_the_crop(monkeypatch) -> None:
    """min_visible=0 (the default: darknet keeps every clipped box of at least 1 px) keeps a box
    cropped to a sliver; a positive min_visible drops it when less of its area is left."""
    config = base.get_config()
    assert config.data.min_visible == AugmentParams().min_visible == 0.0
    config.data.min_visible = 0.25
    assert pipeline.augment_params(config).min_visible == 0.25
    sample = Sample(
        np.zeros((100, 100, 3), np.uint8),
        np.array([[0, 20, 40, 60], [50, 20, 90, 60]], np.float32),
        np.array([0, 1], np.int32),
    )
    # A crop from x=36, as wide as the image: 4 of the first box's 40 columns are left (10%).
    monkeypatch.setattr(
        augment, "jitter_crop", lambda rng, h, w, jitter, resize=1.0: (36.0, 0.0, 136.0, 100.0)
    )

    def crop(min_visible: float) -> Sample:
        p = AugmentParams(flip=False, min_visible=min_visible, **GEOMETRY_ONLY)
        return augment.augment_single(np.random.default_rng(0), sample, (100, 100), p)

    kept = crop(0.0)
    np.testing.assert_array_equal(kept.labels, [0, 1])
    np.testing.assert_allclose(kept.boxes, [[0, 20, 4, 60], [14, 20, 54, 60]], atol=1e-4)
    np.testing.assert_array_equal(crop(0.09).labels, [0, 1])
    np.testing.assert_array_equal(crop(0.11).labels, [1])


def test_rand_scale_takes_darknet_values_on_either_side_of_one() -> None:
    """darknet's rand_scale(.75) (csdarknet53-omega.cfg's saturation, exposure, aspect) draws
    from [.75, 1/.75] like rand_scale(1/.75); 1 is off; a factor <= 0 is an error."""
    for s in (0.75, 1 / 0.75):
        rng = np.random.default_rng(0)
        draws = np.array([augment.rand_scale(rng, s) for _ in range(2000)])
        assert draws.min() >= 0.75 - 1e-9 and draws.max() <= 4 / 3 + 1e-9
        assert abs((draws < 1).mean() - 0.5) < 0.05
        assert draws.min() < 0.76 and draws.max() > 1.32
    assert augment.rand_scale(np.random.default_rng(0), 1.0) == 1.0
    with pytest.raises(ValueError, match="positive"):
        augment.rand_scale(np.random.default_rng(0), 0.0)


@pytest.mark.parametrize("field", ["saturation", "exposure"])
def test_hsv_factor_must_be_positive(field: str) -> None:
    config = base.get_config()
    config.data[field] = 0.75
    assert pipeline.augment_params(config).__getattribute__(field) == 0.75
    config.data[field] = 0.0
    with pytest.raises(ValueError, match=f"config.data.{field}=0.0: expected a positive"):
        pipeline.augment_params(config)


def test_resize_moves_each_side_by_darknets_scale_offsets():
    # data.c with jitter 0, resize 1.5, a 400 x 200 image: each side moves by
    # int(min_rd + r * (max_rd - min_rd)), min_rd = int(ow * (1 - 1.5) / 2) = -100 (-50 in y),
    # max_rd = int(ow * (1 - 1 / 1.5) / 2) = 66 (33); r1 for left and top, r2 for right, bottom.
    for seed in range(5):
        r1, r2 = np.random.default_rng(seed).random(2)
        crop = augment.jitter_crop(np.random.default_rng(seed), 200, 400, 0.0, 1.5)
        left, top = int(-100 + r1 * 166), int(-50 + r1 * 83)
        right, bottom = int(-100 + r2 * 166), int(-50 + r2 * 83)
        assert crop == (left, top, 400 - right, 200 - bottom)
    # resize < 1 only shrinks the content (pads): min_rd = int(400 * (1 - 2) / 2) = -200, max 0.
    r1, r2 = np.random.default_rng(7).random(2)
    crop = augment.jitter_crop(np.random.default_rng(7), 200, 400, 0.0, 0.5)
    assert crop == (
        int(-200 + r1 * 200),
        int(-100 + r1 * 100),
        400 - int(-200 + r2 * 200),
        200 - int(-100 + r2 * 100),
    )
    assert augment.jitter_crop(np.random.default_rng(0), 200, 400, 0.0, 1.0) == (0, 0, 400, 200)


def test_jitter_and_resize_follow_the_last_yolo_head():
    from configs import base
    from yolov4_jax.models import factory, specs

    for name, want in (
        ("yolov4", (0.3, 1.0)),
        ("yolov4_tiny", (0.3, 1.5)),
        ("yolov4_csp", (0.1, 1.5)),
    ):
        config = base.get_config()
        config.model.name = name
        heads = [s for s in factory.model_layers(config.model, 3) if isinstance(s, specs.Yolo)]
        resolved = pipeline.with_head_augmentation(config, heads)
        assert (resolved.data.jitter, resolved.data.resize) == want, name
        assert pipeline.augment_params(resolved).resize == want[1]
        assert config.data.jitter is None  # the caller's config is untouched
        config.data.jitter, config.data.resize = 0.2, 1.0  # explicit values win
        resolved = pipeline.with_head_augmentation(config, heads)
        assert (resolved.data.jitter, resolved.data.resize) == (0.2, 1.0)
    # No heads (a classifier, the data tools): yolov4.cfg's jitter, no resize.
    params = pipeline.augment_params(base.get_config())
    assert (params.jitter, params.resize) == (0.3, 1.0)
