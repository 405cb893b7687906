"""tfds `coco/2017` and `voc` as prepared by tfds: their features map to the project's records.

The fake datasets below have the feature dicts of tensorflow_datasets/object_detection/coco.py
and voc.py (at tfds 4.9), a few tiny images each, written in array_record format without
TensorFlow and without a download, and are read back through `sources` as a user's would be.
"""

from __future__ import annotations

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from configs import test_tiny
from yolov4_jax import data
from yolov4_jax.data import sources
from yolov4_jax.data.augment import Sample

COCO_NAMES = ["person", "bicycle", "car"]
VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat"]
VOC_POSES = ["frontal", "rear", "left", "right", "unspecified"]


def _coco_features() -> tfds.features.FeaturesDict:
    # coco.py: ClassLabel(num_classes=80); the names are set while generating (below).
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(
                {
                    "id": np.int64,
                    "area": np.int64,
                    "bbox": tfds.features.BBoxFeature(),
                    "label": tfds.features.ClassLabel(num_classes=len(COCO_NAMES)),
                    "is_crowd": np.bool_,
                }
            ),
        }
    )


def _voc_features() -> tfds.features.FeaturesDict:
    # voc.py: no image/id, difficult and truncated flags, per-image label lists.
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(),
            "image/filename": tfds.features.Text(),
            "objects": tfds.features.Sequence(
                {
                    "label": tfds.features.ClassLabel(names=VOC_NAMES),
                    "bbox": tfds.features.BBoxFeature(),
                    "pose": tfds.features.ClassLabel(names=VOC_POSES),
                    "is_truncated": np.bool_,
                    "is_difficult": np.bool_,
                }
            ),
            "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=VOC_NAMES)),
            "labels_no_difficult": tfds.features.Sequence(
                tfds.features.ClassLabel(names=VOC_NAMES)
            ),
        }
    )


def _prepare(name: str, config: str, version: str, features, splits: dict, data_dir: str) -> None:
    """Writes ``name/config/version`` in ``data_dir`` as `tfds build --file_format=array_record`."""

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=features())

    def _split_generators(self, dl_manager):  # noqa: ARG001
        if name == "coco":  # as coco.py, which learns the names from the annotation file
            self.info.features["objects"]["label"].names = COCO_NAMES
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples):
        for example in examples:
            yield example["image/filename"], example

    with registered.skip_registration():  # tfds registers its own coco and voc
        cls = type(
            "FakeTfdsDataset",
            (tfds.core.GeneratorBasedBuilder,),
            {
                "name": name,
                "BUILDER_CONFIGS": [tfds.core.BuilderConfig(name=config)],
                "VERSION": tfds.core.Version(version),
                "_info": _info,
                "_split_generators": _split_generators,
                "_generate_examples": _generate_examples,
            },
        )
    cls(config=config, data_dir=data_dir, file_format="array_record").download_and_prepare()


def _encoded(height: int, width: int, ext: str) -> bytes:
    image = np.random.default_rng(height * width).integers(0, 255, (height, width, 3), np.uint8)
    return cv2.imencode(ext, image)[1].tobytes()


def _bbox(x0: float, y0: float, x1: float, y1: float, height: int, width: int):
    """Pixel corners -> tfds's normalised BBox, as coco.py's build_bbox and voc.py do."""
    return tfds.features.BBox(ymin=y0 / height, xmin=x0 / width, ymax=y1 / height, xmax=x1 / width)


def _read(name: str, data_dir: str, split: str) -> dict[str, tuple[Sample, int]]:
    """File name -> (sample, image id), through `sources` as the pipeline reads records."""
    source = sources.open_split(sources.load_builder(name, data_dir), split)
    out = {}
    for k in range(len(source)):
        filename = source[k]["image/filename"]  # tfds Text comes back as bytes
        out[filename.decode() if isinstance(filename, bytes) else filename] = sources.decode(
            source[k]
        )
    return out


def test_tfds_coco_2017_features(tmp_path) -> None:
    # (file, height, width, image id, [(pixel x0, y0, x1, y1), label, is_crowd])
    images = [
        ("a.jpg", 40, 60, 139, [((6, 4, 30, 20), "car", False), ((0, 0, 60, 40), "person", True)]),
        ("b.jpg", 50, 30, 285, [((3, 5, 27, 45), "bicycle", False)]),
        ("c.jpg", 32, 32, 632, []),  # COCO has images without annotations
    ]
    examples = [
        {
            "image": _encoded(h, w, ".jpg"),
            "image/filename": file,
            "image/id": image_id,
            "objects": [
                dict(id=10 * i, area=1, bbox=_bbox(*box, h, w), label=label, is_crowd=crowd)
                for i, (box, label, crowd) in enumerate(objects)
            ],
        }
        for file, h, w, image_id, objects in images
    ]
    data_dir = str(tmp_path)
    _prepare("coco", "2017", "1.1.0", _coco_features, {"validation": examples}, data_dir)

    builder = sources.load_builder("coco/2017", data_dir)
    info = sources.dataset_info_from_builder(builder)
    assert info.task == sources.DETECTION and info.class_names == tuple(COCO_NAMES)
    assert info.num_classes == 3 and info.split_sizes == {"validation": 3}
    read = _read("coco/2017", data_dir, "validation")
    for file, h, w, image_id, objects in images:
        sample, got_id = read[file]
        assert sample.image.shape == (h, w, 3) and got_id == image_id
        # The crowd box is dropped; the others come back as pixel (x1, y1, x2, y2).
        kept = [(box, label) for box, label, crowd in objects if not crowd]
        want = np.array([box for box, _ in kept], np.float32).reshape(-1, 4)
        np.testing.assert_allclose(sample.boxes, want, atol=1e-4)
        assert sample.labels.tolist() == [COCO_NAMES.index(label) for _, label in kept]


def test_tfds_voc_features(tmp_path) -> None:
    objects = [
        ((10, 6, 50, 30), "bird", False),
        ((20, 12, 40, 36), "boat", True),  # difficult: dropped as crowd boxes are
        ((0, 0, 64, 40), "aeroplane", False),
    ]
    h, w = 40, 64
    example = {
        "image": _encoded(h, w, ".png"),
        "image/filename": "000005.jpg",
        "objects": [
            {"label": label, "bbox": _bbox(*box, h, w), "pose": "left", "is_truncated": False}
            | {"is_difficult": difficult}
            for box, label, difficult in objects
        ],
        "labels": sorted({label for _, label, _ in objects}),
        "labels_no_difficult": sorted({label for _, label, d in objects if not d}),
    }
    splits = {"train": [example], "validation": [dict(example, **{"image/filename": "x.jpg"})]}
    data_dir = str(tmp_path)
    _prepare("voc", "2007", "5.0.0", _voc_features, splits, data_dir)

    info = sources.dataset_info_from_builder(sources.load_builder("voc/2007", data_dir))
    assert info.task == sources.DETECTION and info.class_names == tuple(VOC_NAMES)
    sample, image_id = _read("voc/2007", data_dir, "train")["000005.jpg"]
    assert image_id == -1  # voc has no image/id
    np.testing.assert_allclose(sample.boxes, [[10, 6, 50, 30], [0, 0, 64, 40]], atol=1e-4)
    assert sample.labels.tolist() == [VOC_NAMES.index("bird"), VOC_NAMES.index("aeroplane")]

    # The pipeline runs on it: evaluation numbers images by their record index instead.
    config = test_tiny.get_config()
    config.data.name, config.data.data_dir, config.data.batch_size = "voc/2007", data_dir, 2
    (batch,) = list(data.create_eval_iterator(config))
    assert batch["image_id"].tolist() == [0, -1] and batch["valid"].tolist() == [True, False]
    pixel = data.boxes_to_original(batch["boxes"][0], batch["orig_size"][0], (64, 64))
    np.testing.assert_allclose(pixel[batch["mask"][0]], sample.boxes, atol=1e-3)
    assert next(data.create_train_iterator(config, seed=0))["image"].shape == (2, 64, 64, 3)
