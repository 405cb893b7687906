"""The embedded default datasets: procedural scenes, generated deterministically, no download.

``yolov4_synthetic`` (detection) has five classes (circle, square, triangle, cross, ring) that only
the shape tells apart: colour, texture and brightness are drawn the same way for every class, on
cluttered textured backgrounds, with distractor shapes of no class, occlusion, border cuts, sizes
from 8 px to 90% of the image side and an uneven class balance (`yolov4_jax.data.scenes`).
Version 1.0.0 gave each class its own hue; 2.0.0 is the shape-only benchmark.

Stored as a tfds dataset in array_record files, with the features of tfds ``coco``: ``image``
(JPEG bytes), ``image/id``, ``image/filename`` and ``objects`` {``bbox`` as tfds's normalised
(ymin, xmin, ymax, xmax), ``label``, ``is_crowd``}. It is prepared on first use into
``config.data.data_dir`` (`load_builder` calls ``download_and_prepare``) and reused after.

``yolov4_synthetic_cls`` is the classification counterpart for backbone pretraining (the YOLOv4
paper's "BoF for backbone"): ten classes, the five shapes times two colour families (warm: red,
orange, amber; cool: green, cyan, blue), so neither the shape nor the colour alone gives the class.
Each 64-96 px image shows one large shape (35-80% of the image side, random aspect, rotation and
position) on desaturated textured, cluttered backgrounds (the colour family is half of the
class), sometimes over a small shape of another class. Features: ``image`` (JPEG),
``image/id``, ``image/filename``, ``label`` (ClassLabel).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import tensorflow_datasets as tfds

from yolov4_jax.data.scenes import (  # noqa: F401 - the datasets' class lists live with them
    CLASS_FREQUENCIES,
    CLASS_NAMES,
    CLS_CLASS_NAMES,
    COLOUR_FAMILIES,
    render_classification_image,
    render_image,
)

_SPLIT_IDS = {"train": 0, "validation": 1}


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
    """Split sizes and image sizes of one variant of the dataset."""

    num_train: int = 4000
    num_validation: int = 500
    min_side: int = 224
    max_side: int = 320
    max_objects: int = 8
    seed: int = 0


class Yolov4Synthetic(tfds.core.GeneratorBasedBuilder):
    """Procedural shapes for detection; tfds name ``yolov4_synthetic`` (``/tiny`` for tests)."""

    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: one hue per class.",
        "2.0.0": "Shape-only: colour, texture and brightness independent of the class; "
        "distractors, border cuts, 8 px to 90% sizes, uneven classes; visible-extent boxes.",
    }
    BUILDER_CONFIGS = [
        SyntheticConfig(
            name="default", description="4000 train / 500 validation, 224-320 px, 1-8 objects."
        ),
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

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Rotated shapes of random aspect (drawn as in yolov4_synthetic 2.0).",
    }
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
