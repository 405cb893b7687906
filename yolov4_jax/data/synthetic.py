"""The embedded default dataset: procedural shapes, generated deterministically, no download.

Five classes (circle, square, triangle, cross, ring), each a distinct shape with its own hue
(jittered per instance), on textured backgrounds with clutter marks and partial occlusion.
Object sizes are log-uniform from 10 px to 60% of the image side, so each of YOLOv4's three heads
(strides 8, 16, 32) gets positives. Boxes are the exact extent of each drawn shape.

Stored as a tfds dataset in array_record files, with the features of tfds ``coco``: ``image``
(JPEG bytes), ``image/id``, ``image/filename`` and ``objects`` {``bbox`` as tfds's normalised
(ymin, xmin, ymax, xmax), ``label``, ``is_crowd``}. It is prepared on first use into
``config.data.data_dir`` (`load_builder` calls ``download_and_prepare``) and reused after.

``yolov4_synthetic_cls`` is the classification counterpart for backbone pretraining (the YOLOv4
paper's "BoF for backbone"): ten classes, the five shapes times two colour families (warm: red,
orange, amber; cool: green, cyan, blue), so neither the shape nor the colour alone gives the class.
Each 64-96 px image shows one large shape (35-80% of the image side, random aspect and position)
on the same textured, cluttered backgrounds, sometimes with a small distractor shape of another
class. Features: ``image`` (JPEG), ``image/id``, ``image/filename``, ``label`` (ClassLabel).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import tensorflow_datasets as tfds

CLASS_NAMES = ("circle", "square", "triangle", "cross", "ring")
# OpenCV 8-bit hues (degrees / 2): red, blue, green, yellow, magenta.
_CLASS_HUES = (0, 115, 60, 28, 150)
_SPLIT_IDS = {"train": 0, "validation": 1}

COLOUR_FAMILIES = ("warm", "cool")
# OpenCV 8-bit hues of each family: red, orange, amber / green, cyan, blue. The families stay
# apart under the default hue augmentation (+-18) plus the per-instance jitter (+-6).
_FAMILY_HUES = ((0, 10, 20), (68, 95, 115))
# Label 2 * shape + family: "circle_warm", "circle_cool", "square_warm", ...
CLS_CLASS_NAMES = tuple(f"{shape}_{family}" for shape in CLASS_NAMES for family in COLOUR_FAMILIES)


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """Split sizes and image sizes of one variant of the dataset."""

    num_train: int = 4000
    num_validation: int = 500
    min_side: int = 224
    max_side: int = 320
    max_objects: int = 6
    seed: int = 0


class Yolov4Synthetic(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes for detection; tfds name ``yolov4_synthetic`` (``/tiny`` for tests)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticConfig(name="default", description="4000 train / 500 validation, 224-320 px."),
        SyntheticConfig(
            name="tiny",
            description="For tests: 24 train / 12 validation, 96-128 px.",
            num_train=24,
            num_validation=12,
            min_side=96,
            max_side=128,
            max_objects=4,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=detection_features(CLASS_NAMES),
            supervised_keys=None,
        )

    def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
        }

    def _generate_examples(self, split: str, num: int):
        cfg = self.builder_config
        for index in range(num):
            rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
            image, boxes, labels = render_image(rng, cfg.min_side, cfg.max_side, cfg.max_objects)
            h, w = image.shape[:2]
            yield (
                index,
                {
                    "image": _jpeg(image),
                    "image/id": index,
                    "image/filename": f"{split}_{index:06d}.jpg",
                    "objects": {
                        "bbox": xyxy_pixels_to_tfds(boxes, h, w),
                        "label": labels.astype(np.int64),
                        "is_crowd": np.zeros(len(labels), np.bool_),
                    },
                },
            )


@dataclasses.dataclass
class SyntheticClsConfig(tfds.core.BuilderConfig):
    """Split sizes and image sizes of one variant of the classification dataset."""

    num_train: int = 5000
    num_validation: int = 1000
    min_side: int = 64
    max_side: int = 96
    seed: int = 0


class Yolov4SyntheticCls(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes for classification; tfds name ``yolov4_synthetic_cls`` (``/tiny``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        SyntheticClsConfig(name="default", description="5000 train / 1000 validation, 64-96 px."),
        SyntheticClsConfig(
            name="tiny",
            description="For tests: 40 train / 20 validation.",
            num_train=40,
            num_validation=20,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=classification_features(CLS_CLASS_NAMES),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):  # noqa: ARG002 - nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples("train", cfg.num_train),
            "validation": self._generate_examples("validation", cfg.num_validation),
        }

    def _generate_examples(self, split: str, num: int):
        cfg = self.builder_config
        n = len(CLS_CLASS_NAMES)
        for index in range(num):
            # Balanced: every run of ten records holds each class once, in a random order.
            order = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index // n, 1])
            label = int(order.permutation(n)[index % n])
            rng = np.random.default_rng([cfg.seed, _SPLIT_IDS[split], index])
            image = render_classification_image(rng, label, cfg.min_side, cfg.max_side)
            yield (
                index,
                {
                    "image": _jpeg(image),
                    "image/id": index,
                    "image/filename": f"{split}_{index:06d}.jpg",
                    "label": label,
                },
            )


def classification_features(class_names) -> tfds.features.FeaturesDict:
    """The record format of the classification datasets this project writes (tfds-style)."""
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": tfds.features.Scalar(np.int64),
            "image/filename": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=list(class_names)),
        }
    )


def _jpeg(image: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return jpeg.tobytes()


def detection_features(class_names, with_area: bool = False) -> tfds.features.FeaturesDict:
    """The record format shared by every dataset this project writes (that of tfds ``coco``).

    ``with_area`` adds each object's ``area`` in pixels (COCO's annotation area), which the
    COCO evaluation uses for AP_small/medium/large.
    """
    objects = {
        "bbox": tfds.features.BBoxFeature(),
        "label": tfds.features.ClassLabel(names=list(class_names)),
        "is_crowd": tfds.features.Scalar(np.bool_),
    }
    if with_area:
        objects["area"] = tfds.features.Scalar(np.float32)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/id": tfds.features.Scalar(np.int64),
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence(objects),
        }
    )


def xyxy_pixels_to_tfds(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel (x1, y1, x2, y2) -> tfds's normalised (ymin, xmin, ymax, xmax), clipped to [0, 1]."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    out = boxes[:, [1, 0, 3, 2]] / np.array([height, width, height, width], np.float32)
    return np.clip(out, 0.0, 1.0)


def _grain_tile() -> np.ndarray:
    # Fine grain is cut from one fixed noise tile: drawing fresh normals per pixel was most of
    # the generation time.
    global _GRAIN
    if _GRAIN is None:
        _GRAIN = np.random.default_rng(1234).normal(0, 5, size=(512, 512, 1)).astype(np.float32)
    return _GRAIN


_GRAIN: np.ndarray | None = None


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-contrast, desaturated texture: smooth blotches, optional stripes, fine grain."""
    base = rng.uniform(60, 190, size=3).astype(np.float32)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = rng.normal(0, 28, size=(gh, gw, 1)) + rng.normal(0, 8, size=(gh, gw, 3))
    image = cv2.resize((grid + base).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.4:  # stripes at a random angle
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        k = 2 * np.pi / period
        xs = np.arange(w, dtype=np.float32) * np.float32(k * np.cos(angle))
        ys = np.arange(h, dtype=np.float32) * np.float32(k * np.sin(angle))
        image += np.float32(rng.uniform(6, 16)) * np.sin(ys[:, None] + xs[None, :])[..., None]
    oy, ox = int(rng.integers(0, 512 - h + 1)), int(rng.integers(0, 512 - w + 1))
    image += _grain_tile()[oy : oy + h, ox : ox + w]
    return np.clip(image, 0, 255).astype(np.uint8)


def _clutter(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Distractor marks: thin lines, dots and grey blobs that are not objects."""
    h, w = image.shape[:2]
    for _ in range(count):
        grey = int(rng.integers(20, 235))
        colour = tuple(int(np.clip(grey + rng.normal(0, 15), 0, 255)) for _ in range(3))
        kind = rng.integers(3)
        p0 = (int(rng.integers(w)), int(rng.integers(h)))
        if kind == 0:
            p1 = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.line(image, p0, p1, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
        elif kind == 1:
            cv2.circle(image, p0, int(rng.integers(1, 4)), colour, -1, cv2.LINE_AA)
        else:
            pts = np.array(p0) + rng.normal(0, rng.uniform(3, 10), size=(5, 2))
            cv2.fillPoly(image, [pts.astype(np.int32)], colour, cv2.LINE_AA)


def _shape_mask(label: int, bw: int, bh: int, rng: np.random.Generator) -> np.ndarray:
    """A [bh, bw] uint8 mask of class ``label``'s shape filling its box."""
    mask = np.zeros((bh, bw), np.uint8)
    cx, cy, ax, ay = (bw - 1) / 2, (bh - 1) / 2, (bw - 1) / 2, (bh - 1) / 2
    centre, axes = (round(cx), round(cy)), (round(ax), round(ay))
    if label == 0:  # circle (an ellipse under aspect jitter)
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    elif label == 1:  # square
        mask[:] = 255
    elif label == 2:  # triangle, apex up
        pts = np.array([[cx, 0], [0, bh - 1], [bw - 1, bh - 1]], np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA)
    elif label == 3:  # cross (plus sign)
        t = rng.uniform(0.25, 0.4)
        mask[:, round(cx - t * bw / 2) : round(cx + t * bw / 2) + 1] = 255
        mask[round(cy - t * bh / 2) : round(cy + t * bh / 2) + 1, :] = 255
    else:  # ring
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
        inner = (round(ax * rng.uniform(0.45, 0.65)), round(ay * rng.uniform(0.45, 0.65)))
        cv2.ellipse(mask, centre, inner, 0, 0, 360, 0, -1, cv2.LINE_AA)
    return mask


def _colour(rng: np.random.Generator, base_hue: int) -> np.ndarray:
    hue = (base_hue + rng.integers(-6, 7)) % 180
    hsv = np.array([[[hue, rng.integers(170, 256), rng.integers(170, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _paint(
    rng: np.random.Generator,
    image: np.ndarray,
    shape: int,
    base_hue: int,
    box: tuple[int, int, int, int],
) -> np.ndarray:
    """Draws ``shape`` filling ``box`` (x0, y0, width, height), shaded; returns its [h, w] mask."""
    x0, y0, bw, bh = box
    mask = _shape_mask(shape, bw, bh, rng).astype(np.float32)[..., None] / 255.0
    shade = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.15), bh)[:, None, None]
    colour = np.clip(_colour(rng, base_hue) * shade, 0, 255)
    region = image[y0 : y0 + bh, x0 : x0 + bw].astype(np.float32)
    image[y0 : y0 + bh, x0 : x0 + bw] = (region * (1 - mask) + colour * mask).astype(np.uint8)
    return mask[..., 0]


def render_classification_image(
    rng: np.random.Generator, label: int, min_side: int, max_side: int
) -> np.ndarray:
    """One RGB image of class ``label`` of `CLS_CLASS_NAMES`: a dominant shape on clutter."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    image = _background(rng, h, w)
    _clutter(rng, image, int(rng.integers(1, 6)))
    n = len(CLS_CLASS_NAMES)
    if rng.random() < 0.5:  # a small distractor of another class, under the main shape
        other = (label + int(rng.integers(1, n))) % n
        side = rng.uniform(0.12, 0.25) * min(h, w)
        bw, bh = max(int(side), 6), max(int(side), 6)
        x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        _paint(rng, image, other // 2, _family_hue(rng, other % 2), (x0, y0, bw, bh))
    side = rng.uniform(0.35, 0.8) * min(h, w)
    aspect = np.exp(rng.uniform(-0.3, 0.3))
    bw, bh = min(int(side * aspect), w), min(int(side / aspect), h)
    x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
    _paint(rng, image, label // 2, _family_hue(rng, label % 2), (x0, y0, bw, bh))
    _clutter(rng, image, int(rng.integers(0, 3)))
    return image


def _family_hue(rng: np.random.Generator, family: int) -> int:
    return int(rng.choice(_FAMILY_HUES[family]))


def render_image(
    rng: np.random.Generator, min_side: int, max_side: int, max_objects: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB image with its pixel xyxy boxes [N, 4] and labels [N]."""
    h, w = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    image = _background(rng, h, w)
    _clutter(rng, image, int(rng.integers(2, 10)))
    boxes: list[list[int]] = []
    labels: list[int] = []
    max_size = 0.6 * min(h, w)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _attempt in range(20):
            size = np.exp(rng.uniform(np.log(10), np.log(max_size)))
            aspect = np.exp(rng.uniform(-0.25, 0.25))
            bw, bh = max(int(size * aspect), 8), max(int(size / aspect), 8)
            if bw >= w or bh >= h:
                continue
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            new = np.array([x0, y0, x0 + bw, y0 + bh])
            # Partial occlusion only: the new shape (drawn on top) may hide at most 35% of an
            # earlier box, and may not sit inside a box.
            if boxes and not _occlusion_ok(np.array(boxes), new):
                continue
            mask = _paint(rng, image, label, _CLASS_HUES[label], (x0, y0, bw, bh))
            ys, xs = np.nonzero(mask > 0.5)
            boxes.append([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
            labels.append(label)
            break
    # A few thin marks on top partially occlude objects too.
    _clutter(rng, image, int(rng.integers(0, 3)))
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int32)


def _occlusion_ok(boxes: np.ndarray, new: np.ndarray) -> bool:
    ix = np.clip(np.minimum(boxes[:, 2], new[2]) - np.maximum(boxes[:, 0], new[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], new[3]) - np.maximum(boxes[:, 1], new[1]), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    new_area = (new[2] - new[0]) * (new[3] - new[1])
    return bool(np.all(ix * iy <= 0.35 * area) and np.all(ix * iy <= 0.5 * new_area))
