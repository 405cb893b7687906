"""Classification batches for backbone pretraining (the YOLOv4 paper's "BoF for backbone").

The design of pipeline.py: one grain element is one whole batch, built by random access, so every
batch is a pure function of (seed, process, step), independent of the number of workers, and the
iterator's checkpointable state is its position in the stream.

Training batch (per process): ``image`` uint8 [B, S, S, 3] RGB with S = ``data.image_size`` and
B = ``data.batch_size // process_count``; ``label`` int32 [B], the class of each sample's base
image; ``target`` float32 [B, K], the label distribution after mixing (rows sum to 1, one-hot
for unmixed samples). Label smoothing belongs to the loss, not to the data.
Evaluation batch: ``image`` uint8 [B, S', S', 3] stretched to ``eval_image_size or image_size``;
``label`` int32 [B]; ``valid`` bool [B], False on the padding rows of the last batch.

Augmentation uses the flags of ``config.data`` with darknet's classifier semantics
(data.c::load_data_augment):
- every image: jitter crop (``jitter``), stretch, ``flip``, HSV (``hue``, ``saturation``,
  ``exposure``): augment.augment_single without boxes; or, with ``min_crop > 0``, darknet's
  classifier crop (`random_augment_image`: scale, ``aspect``, rotation by up to ``angle``,
  shift), then ``flip`` and HSV, as data.c::load_image_augment_paths;
- CutMix (``cutmix``, ``cutmix_prob``): a patch with sides uniform in [cutmix_min_size,
  cutmix_max_size] of the canvas, at a uniform position, copied from a second augmented image at
  the same place; target (1 - a) onehot(y1) + a onehot(y2), a = patch area / canvas area;
- Mosaic (``mosaic``, ``mosaic_prob``): a cut point uniform in [mosaic_min_cut, mosaic_max_cut]
  of each side; four distinct images, each augmented straight to its quadrant's size; the target
  weights each label by its quadrant's area (darknet's s1..s4; darknet shows each full-size
  image's own pixels of the quadrant instead, which can cut the object away);
- with both on, a sample is mixed with probability max(mosaic_prob, cutmix_prob), then Mosaic or
  CutMix with equal chance (darknet's mosaic=1 cutmix=1 draws rand_int(2, 3) per sample);
- MixUp (``mixup``, ``mixup_prob``) for samples not already mixed: 0.5/0.5 blend and target.
Darknet draws "mix or not" once per loaded batch (p=.5); here each sample draws its own, like
the detection pipeline. ``letterbox``, ``random_shapes`` and ``dynamic_minibatch`` do not apply.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import cv2
import grain
import ml_collections
import numpy as np

from yolov4_jax.data import augment, loader, pipeline, sources
from yolov4_jax.data.augment import AugmentParams

Patch = tuple[int, int, int, int]  # (x0, y0, x1, y1), whole pixels


# --- Mixing: pure functions of images (and rng), returning the mixed image and exact weights.


def choose_mix(rng: np.random.Generator, p: AugmentParams) -> str:
    """ "mosaic", "cutmix", "mixup" or "none" for one sample (a probability of 0 turns one off).

    Mosaic and CutMix both on: mixed with probability max(mosaic_prob, cutmix_prob), then either
    with p=.5 (data.c::load_data_augment, mixup=4). MixUp only for samples not mixed otherwise.
    """
    mosaic_on, cutmix_on = p.mosaic_prob > 0, p.cutmix_prob > 0
    if mosaic_on and cutmix_on:
        if rng.random() < max(p.mosaic_prob, p.cutmix_prob):
            return "mosaic" if rng.random() < 0.5 else "cutmix"
    elif mosaic_on and rng.random() < p.mosaic_prob:
        return "mosaic"
    elif cutmix_on and rng.random() < p.cutmix_prob:
        return "cutmix"
    if p.mixup_prob > 0 and rng.random() < p.mixup_prob:
        return "mixup"
    return "none"


def cutmix_patch(
    rng: np.random.Generator, canvas_hw: tuple[int, int], min_size: float, max_size: float
) -> Patch:
    """A patch whose sides are uniform in [min_size, max_size] of the canvas, uniformly placed."""
    ch, cw = canvas_hw
    pw = min(max(int(rng.uniform(min_size, max_size) * cw), 1), cw)
    ph = min(max(int(rng.uniform(min_size, max_size) * ch), 1), ch)
    x0, y0 = int(rng.integers(0, cw - pw + 1)), int(rng.integers(0, ch - ph + 1))
    return x0, y0, x0 + pw, y0 + ph


def cutmix(a: np.ndarray, b: np.ndarray, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
    """``a`` with ``patch`` replaced by the same region of ``b`` (same shape as ``a``).

    Returns the image and the weights [2] of a's and b's labels: (1 - s, s), s the patch's pixel
    area over the image's (data.c::load_data_augment: alpha = cut_w * cut_h / (w * h)).
    """
    x0, y0, x1, y1 = patch
    image = a.copy()
    image[y0:y1, x0:x1] = b[y0:y1, x0:x1]
    share = (x1 - x0) * (y1 - y0) / (a.shape[0] * a.shape[1])
    return image, np.array([1.0 - share, share])


def mosaic_cut(
    rng: np.random.Generator, canvas_hw: tuple[int, int], min_cut: float, max_cut: float
) -> tuple[int, int]:
    """(cut_x, cut_y): uniform in [min_cut, max_cut] of each side, at least 1 px from the edges."""
    ch, cw = canvas_hw
    cut_x = int(rng.uniform(min_cut, max_cut) * cw)
    cut_y = int(rng.uniform(min_cut, max_cut) * ch)
    return min(max(cut_x, 1), cw - 1), min(max(cut_y, 1), ch - 1)


def mosaic_quadrants(canvas_hw: tuple[int, int], cut: tuple[int, int]) -> list[Patch]:
    """The top-left, top-right, bottom-left and bottom-right rectangles around ``cut``."""
    ch, cw = canvas_hw
    cx, cy = cut
    return [(0, 0, cx, cy), (cx, 0, cw, cy), (0, cy, cx, ch), (cx, cy, cw, ch)]


def mosaic(
    images: Sequence[np.ndarray], canvas_hw: tuple[int, int], cut: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Four images around ``cut`` (in `mosaic_quadrants` order), each resized to its quadrant.

    Returns the image and the weights [4] of the four labels: each quadrant's pixel area over the
    canvas's (darknet's s1..s4).
    """
    if len(images) != 4:
        raise ValueError(f"mosaic needs 4 images, got {len(images)}")
    ch, cw = canvas_hw
    out = np.empty((ch, cw, 3), np.uint8)
    weights = np.empty(4)
    for i, (image, (x0, y0, x1, y1)) in enumerate(
        zip(images, mosaic_quadrants(canvas_hw, cut), strict=True)
    ):
        if image.shape[:2] != (y1 - y0, x1 - x0):
            image = cv2.resize(image, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        out[y0:y1, x0:x1] = image
        weights[i] = (x1 - x0) * (y1 - y0) / (ch * cw)
    return out, weights


def mixup(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MixUp as darknet's classifier (mixup=1): a 0.5/0.5 blend of the images and the labels."""
    empty = augment.empty_boxes()
    blend = augment.mixup(augment.Sample(a, *empty), augment.Sample(b, *empty)).image
    return blend, np.array([0.5, 0.5])


def mix_target(labels: Sequence[int], weights: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 [K]: ``sum_i weights[i] * onehot(labels[i])`` (labels may repeat)."""
    target = np.zeros(num_classes, np.float64)
    np.add.at(target, np.asarray(labels, np.int64), np.asarray(weights, np.float64))
    return target.astype(np.float32)


# --- Darknet's classifier crop (image.c::random_augment_image), used when min_crop > 0.

# Darknet's bilinear_interpolate reads 0 (black) outside the image (image.c::get_pixel_extend,
# whose clamp to the border is commented out), so crops that leave the image show black.
CROP_BORDER_VALUE = (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class CropParams:
    """The classifier crop flags of ``config.data`` (configs/base.py); ``min_crop=0``: off."""

    min_crop: int = 0  # the shorter side is resized to r, an integer in [min_crop, max_crop]
    max_crop: int = 0
    aspect: float = 1.0  # darknet's value: the squeeze is rand_scale(aspect)
    angle: float = 0.0  # degrees


class CropArgs(NamedTuple):
    """One draw of the crop (darknet's augment_args)."""

    rad: float  # rotation about the image centre, radians
    scale: float  # canvas pixels per source pixel, vertically
    aspect: float  # horizontally, aspect / scale source pixels per canvas pixel
    dx: float  # shift of the crop's centre from the image's, canvas pixels
    dy: float


def crop_params(config: ml_collections.ConfigDict) -> CropParams:
    """The crop flags of ``config.data``; a ValueError names a field with a bad value."""
    d = config.data

    def bad(field: str, expected: str) -> ValueError:
        return ValueError(f"config.data.{field}={d[field]!r}: expected {expected}")

    if d.min_crop < 0:
        raise bad("min_crop", "0 (off: the jitter crop) or the smallest side r in pixels")
    if d.max_crop < 0 or (d.min_crop > 0 and d.max_crop < d.min_crop):
        raise bad("max_crop", f"at least config.data.min_crop={d.min_crop} (r is drawn between)")
    if not (math.isfinite(d.aspect) and d.aspect > 0):
        raise bad("aspect", "a positive factor, darknet's value (1: off; .75 as 1/.75)")
    if not (math.isfinite(d.angle) and d.angle >= 0):
        raise bad("angle", "the largest rotation in degrees, >= 0 (0: off)")
    return CropParams(int(d.min_crop), int(d.max_crop), float(d.aspect), float(d.angle))


def random_crop_args(
    rng: np.random.Generator, image_hw: tuple[int, int], canvas_hw: tuple[int, int], c: CropParams
) -> CropArgs:
    """Darknet's random_augment_args: squeeze, r, rotation and shift (in this order).

    The shorter side goes to r canvas pixels, with darknet's rule min(h, w * aspect) (the crop
    itself divides the width by aspect; the same for aspect 1). The shift is uniform within the
    part of the scaled image that overhangs the canvas, and 0 where it does not.
    """
    h, w = image_hw
    ch, cw = canvas_hw
    aspect = augment.rand_scale(rng, c.aspect)
    r = int(rng.integers(c.min_crop, c.max_crop + 1))
    scale = r / max(int(min(h, w * aspect)), 1)
    rad = math.radians(rng.uniform(-c.angle, c.angle))
    dx = max((w * scale / aspect - cw) / 2, 0.0)
    dy = max((h * scale - ch) / 2, 0.0)
    return CropArgs(rad, scale, aspect, rng.uniform(-dx, dx), rng.uniform(-dy, dy))


def crop_matrix(
    image_hw: tuple[int, int],
    args: CropArgs,
    canvas_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """float64 [2, 3]: output pixel (x, y, 1) -> source pixel, darknet's rotate_crop_image.

    Canvas point (X, Y) shows source (cos u - sin v + w/2, sin u + cos v + h/2), with
    u = (X - cw/2 + dx) * aspect / scale and v = (Y - ch/2 + dy) / scale, in coordinates where
    pixel i spans [i, i + 1] (darknet uses indices, half a pixel off; with this convention no
    rotation, aspect 1 and no shift is exactly cv2.resize). An ``out_hw`` output is the canvas
    stretched to that size (a Mosaic quadrant).
    """
    h, w = image_hw
    ch, cw = canvas_hw
    oh, ow = out_hw or canvas_hw
    cos, sin = math.cos(args.rad), math.sin(args.rad)
    rotate = np.array([[cos, -sin, w / 2], [sin, cos, h / 2], [0, 0, 1]])
    squeeze = np.diag([args.aspect / args.scale, 1 / args.scale, 1.0])
    shift = np.array([[1, 0, args.dx - cw / 2], [0, 1, args.dy - ch / 2], [0, 0, 1]])
    stretch = np.diag([cw / ow, ch / oh, 1.0])
    to_centres = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])  # index -> coordinate
    m = np.linalg.inv(to_centres) @ rotate @ squeeze @ shift @ stretch @ to_centres
    return m[:2]


def rotate_crop_image(
    image: np.ndarray,
    args: CropArgs,
    canvas_hw: tuple[int, int],
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """uint8 [oh, ow, 3]: the crop ``args`` of ``image`` (`crop_matrix`), one bilinear warp."""
    oh, ow = out_hw or canvas_hw
    return cv2.warpAffine(
        image,
        crop_matrix(image.shape[:2], args, canvas_hw, out_hw),
        (ow, oh),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=CROP_BORDER_VALUE,
    )


def random_augment_image(
    rng: np.random.Generator,
    image: np.ndarray,
    canvas_hw: tuple[int, int],
    c: CropParams,
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Darknet's classifier crop (image.c::random_augment_image): a random `random_crop_args`
    draw rendered on the ``canvas_hw`` network input (or stretched to ``out_hw``)."""
    args = random_crop_args(rng, image.shape[:2], canvas_hw, c)
    return rotate_crop_image(image, args, canvas_hw, out_hw)


def _augment_image(
    rng: np.random.Generator,
    image: np.ndarray,
    out_hw: tuple[int, int],
    p: AugmentParams,
    crop: CropParams,
    canvas_hw: tuple[int, int],
) -> np.ndarray:
    """One image augmented to ``out_hw`` (the canvas, or a Mosaic quadrant of ``canvas_hw``)."""
    if crop.min_crop > 0:
        # data.c::load_image_augment_paths: the crop, then flip, then HSV.
        out = random_augment_image(rng, image, canvas_hw, crop, out_hw)
        if p.flip and rng.random() < 0.5:
            out = cv2.flip(out, 1)
        return augment.random_hsv(rng, out, p.hue, p.saturation, p.exposure)
    sample = augment.Sample(image, *augment.empty_boxes())
    return augment.augment_single(rng, sample, out_hw, p).image


def augment_and_mix(
    rng: np.random.Generator,
    images: Sequence[np.ndarray],
    canvas_hw: tuple[int, int],
    p: AugmentParams,
    mix: str,
    crop: CropParams = CropParams(),
) -> tuple[np.ndarray, np.ndarray]:
    """The training transform of one sample: (canvas image, weights of the images' labels).

    ``images`` holds 4 decoded images for "mosaic", 2 for "cutmix" and "mixup", 1 for "none".
    Each image gets the jitter crop, or darknet's classifier crop when ``crop.min_crop > 0``.
    """
    if len(images) != augment.num_images(mix):
        raise ValueError(f"{mix} needs {augment.num_images(mix)} images, got {len(images)}")
    if mix == "mosaic":
        cut = mosaic_cut(rng, canvas_hw, p.mosaic_min_cut, p.mosaic_max_cut)
        parts = [
            _augment_image(rng, image, (y1 - y0, x1 - x0), p, crop, canvas_hw)
            for image, (x0, y0, x1, y1) in zip(
                images, mosaic_quadrants(canvas_hw, cut), strict=True
            )
        ]
        return mosaic(parts, canvas_hw, cut)
    augmented = [_augment_image(rng, image, canvas_hw, p, crop, canvas_hw) for image in images]
    if mix == "cutmix":
        patch = cutmix_patch(rng, canvas_hw, p.cutmix_min_size, p.cutmix_max_size)
        return cutmix(augmented[0], augmented[1], patch)
    if mix == "mixup":
        return mixup(augmented[0], augmented[1])
    return augmented[0], np.ones(1)


# --- The grain transforms and iterators.


def _read(
    transform: pipeline._BatchTransform, key: int, num_classes: int
) -> tuple[np.ndarray, int]:
    """Record ``key`` -> (RGB image, label), with the dataset dir, split and record on errors."""
    record = transform.source()[int(key)]
    try:
        image, label = sources.decode_classification(record)
        if not 0 <= label < num_classes:
            raise ValueError(f"label {label} outside [0, {num_classes})")
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{transform._builder_dir} split {transform._split} record {key}: {e}"
        ) from e
    return image, label


class _TrainBatches(pipeline._ShardedBatches):
    """Builds classification training batch ``step`` of one process."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        builder_dir: str,
        split: str,
        *,
        num_records: int,
        num_classes: int,
        process_index: int,
        process_count: int,
        seed: int,
        batch_multiple: int,
    ):
        super().__init__(
            builder_dir,
            split,
            config.data.workers,
            num_records=num_records,
            process_index=process_index,
            process_count=process_count,
            seed=seed,
        )
        d = config.data
        if d.batch_size % process_count:
            raise ValueError(f"batch_size {d.batch_size} is not divisible by {process_count}")
        self._batch = d.batch_size // process_count
        if self._batch % batch_multiple:
            raise ValueError(
                f"per-process batch {self._batch} is not a multiple of {batch_multiple}"
            )
        self._canvas = (d.image_size, d.image_size)
        self._params = dataclasses.replace(pipeline.augment_params(config), letterbox=False)
        self._crop = crop_params(config)
        self._num_classes = num_classes

    def read(self, key: int) -> tuple[np.ndarray, int]:
        return _read(self, key, self._num_classes)

    def sample(self, step: int, index: int) -> tuple[np.ndarray, int, np.ndarray]:
        """(image, base label, target) of sample ``index`` of batch ``step``."""
        rng = np.random.default_rng([self._seed, self._process_index, step, index])
        keys = [self._key(step * self._batch + index)]
        mix = choose_mix(rng, self._params)
        while len(keys) < augment.num_images(mix):
            keys.append(self._random_key(rng, keys))
        images, labels = zip(*(self.read(k) for k in keys), strict=True)
        image, weights = augment_and_mix(rng, images, self._canvas, self._params, mix, self._crop)
        return image, labels[0], mix_target(labels, weights, self._num_classes)

    def map(self, step: int) -> dict[str, np.ndarray]:
        b, (h, w) = self._batch, self._canvas
        out = {
            "image": np.empty((b, h, w, 3), np.uint8),
            "label": np.empty((b,), np.int32),
            "target": np.empty((b, self._num_classes), np.float32),
        }
        for i in range(b):
            out["image"][i], out["label"][i], out["target"][i] = self.sample(step, i)
        return out


class _EvalBatches(pipeline._BatchTransform):
    """Builds evaluation batch ``step``: stretch-resize only, padded with invalid rows."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        builder_dir: str,
        split: str,
        *,
        num_records: int,
        num_classes: int,
        process_index: int,
        process_count: int,
    ):
        super().__init__(builder_dir, split, config.data.workers)
        d = config.data
        self._batch = d.eval_batch_size or d.batch_size
        if self._batch % process_count:
            raise ValueError(f"eval batch {self._batch} is not divisible by {process_count}")
        self._batch //= process_count
        self._canvas = d.eval_image_size or d.image_size
        self._num_records = num_records
        self._num_classes = num_classes
        self._process_index, self._process_count = process_index, process_count

    def read(self, key: int) -> tuple[np.ndarray, int]:
        return _read(self, key, self._num_classes)

    def map(self, step: int) -> dict[str, np.ndarray]:
        b, c = self._batch, self._canvas
        out = {
            "image": np.zeros((b, c, c, 3), np.uint8),
            "label": np.zeros((b,), np.int32),
            "valid": np.zeros((b,), bool),
        }
        first = (step * self._process_count + self._process_index) * b
        for i, key in enumerate(range(first, min(first + b, self._num_records))):
            image, label = self.read(key)
            out["image"][i] = cv2.resize(image, (c, c), interpolation=cv2.INTER_LINEAR)
            out["label"][i] = label
            out["valid"][i] = True
        return out


def _prepared(config: ml_collections.ConfigDict, split: str) -> tuple[str, int, int]:
    """(dataset dir, records in ``split``, classes); a clear error for a detection dataset."""
    builder_dir, num_records = pipeline._prepared(config, split, sources.CLASSIFICATION)
    info = sources.dataset_info_from_builder(sources.builder_from_directory(builder_dir))
    return builder_dir, num_records, info.num_classes


def create_classification_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    process_index: int = 0,
    process_count: int = 1,
    seed: int,
    split: str = "train",
    batch_multiple: int = 1,
) -> grain.DataLoaderIterator:
    """An endless, checkpointable iterator of this process's classification training batches.

    Each batch: ``image`` uint8 [B, S, S, 3], ``label`` int32 [B], ``target`` float32 [B, K]
    (module docstring). ``batch_multiple`` (e.g. the local device count) must divide B. Use
    ``get_state``/``set_state`` (or grain.checkpoint with orbax) to resume.
    """
    builder_dir, num_records, num_classes = _prepared(config, split)
    transform = _TrainBatches(
        config,
        builder_dir,
        split,
        num_records=num_records,
        num_classes=num_classes,
        process_index=process_index,
        process_count=process_count,
        seed=seed,
        batch_multiple=batch_multiple,
    )
    return loader.loader(transform, None, config.data.workers)


def num_classification_eval_batches(config: ml_collections.ConfigDict, num_records: int) -> int:
    """Batches (per process, the same on all) that cover ``num_records`` evaluation images."""
    return math.ceil(num_records / (config.data.eval_batch_size or config.data.batch_size))


def create_classification_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str = "validation",
    *,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DataLoaderIterator:
    """One ordered pass over ``split``, stretched to the eval size, padded to whole batches.

    Each batch: ``image`` uint8 [B, S', S', 3], ``label`` int32 [B], ``valid`` bool [B], with
    B = ``(eval_batch_size or batch_size) // process_count``; every process yields
    `num_classification_eval_batches` batches.
    """
    builder_dir, num_records, num_classes = _prepared(config, split)
    transform = _EvalBatches(
        config,
        builder_dir,
        split,
        num_records=num_records,
        num_classes=num_classes,
        process_index=process_index,
        process_count=process_count,
    )
    steps = num_classification_eval_batches(config, num_records)
    return loader.loader(transform, steps, config.data.workers)
