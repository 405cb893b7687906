"""Dataset sources: tfds array_record datasets read with ``as_data_source()`` (no TensorFlow).

``config.data.name`` selects one of:
- ``yolov4_synthetic`` (or ``yolov4_synthetic/tiny``): the embedded detection dataset, prepared
  on first use into ``config.data.data_dir``; ``yolov4_synthetic_cls`` (``/tiny``) is its
  classification counterpart (backbone pretraining);
- a folder converted by ``python -m yolov4_jax.data.prepare --name NAME`` (see prepare.py);
- any tfds detection dataset already prepared in array_record format in ``data_dir`` with the
  features of tfds ``coco`` (``coco/2017``), or of ``voc`` (its ``is_difficult`` boxes are
  treated like crowd boxes); or any classification dataset with a top-level ``label``
  ClassLabel and an ``image`` (tfds ``imagenet2012``).

`DatasetInfo.task` tells the two kinds apart. Detection records hold the encoded image and
tfds's normalised (ymin, xmin, ymax, xmax) boxes; `decode` turns one into an RGB image with pixel
(x1, y1, x2, y2) boxes. Crowd boxes are dropped, from training and evaluation ground truth alike:
darknet's COCO labels omit them (evaluation.py says how this moves COCO's AP). A record without
``image/id`` (``voc``) gets -1. `decode_classification` gives (image, label).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from yolov4_jax.data import synthetic
from yolov4_jax.data.augment import Sample

SYNTHETIC_NAME = "yolov4_synthetic"
SYNTHETIC_CLS_NAME = "yolov4_synthetic_cls"
DETECTION = "detection"
CLASSIFICATION = "classification"
# The embedded datasets: generated on first use, no download.
_EMBEDDED = {
    SYNTHETIC_NAME: synthetic.Yolov4Synthetic,
    SYNTHETIC_CLS_NAME: synthetic.Yolov4SyntheticCls,
}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the code needs to know about a dataset."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    task: str = DETECTION  # "detection" (objects/label) or "classification" (label)


def resolve_data_dir(data_dir: str) -> str:
    """Expands ``~`` and environment variables."""
    return os.path.expandvars(os.path.expanduser(data_dir))


def _find_prepared(name: str, data_dir: str) -> str | None:
    """The newest prepared version directory ``data_dir/name/X.Y.Z``, if any."""
    root = epath.Path(data_dir) / name
    if not root.is_dir():
        return None
    versions = []
    for child in root.iterdir():
        parts = child.name.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            if (child / "dataset_info.json").exists():
                versions.append((tuple(int(p) for p in parts), child))
    return os.fspath(max(versions)[1]) if versions else None


def load_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """A tfds builder for ``name`` in ``data_dir``, preparing the embedded dataset if needed."""
    data_dir = resolve_data_dir(data_dir)
    base = name.split("/")[0]
    if base in _EMBEDDED:
        cls = _EMBEDDED[base]
        config = name.split("/")[1] if "/" in name else "default"
        builder = cls(config=config, data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            os.makedirs(data_dir, exist_ok=True)
            # Several processes may start at once (multi-host, tests): one prepares.
            with open(os.path.join(data_dir, f".{base}.lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not builder.is_prepared():
                    builder.download_and_prepare()
            builder = cls(config=config, data_dir=data_dir, file_format="array_record")
        return builder
    path = _find_prepared(name, data_dir)
    if path is None:
        raise FileNotFoundError(
            f"Dataset {name!r} is not prepared in {data_dir!r}. Convert a COCO, YOLO or "
            "class-subfolder folder with `python -m yolov4_jax.data.prepare ... --name NAME "
            "--data-dir DIR`, prepare a tfds dataset in array_record format (`tfds build "
            "coco/2017 --file_format=array_record`, or imagenet2012), or use an embedded dataset "
            f"(config.data.name={SYNTHETIC_NAME!r} or {SYNTHETIC_CLS_NAME!r})."
        )
    return tfds.builder_from_directory(path)


def builder_from_directory(path: str) -> tfds.core.DatasetBuilder:
    """The builder of a prepared dataset version directory (``data_dir/name/X.Y.Z``)."""
    return tfds.builder_from_directory(path)


def open_split(builder: tfds.core.DatasetBuilder, split: str) -> Any:
    """A random-access source of ``split`` whose records keep the image encoded."""
    if split not in builder.info.splits:
        raise KeyError(
            f"{builder.name} has no split {split!r}; it has {sorted(builder.info.splits)}"
        )
    try:
        return builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    except NotImplementedError as e:
        raise ValueError(
            f"{builder.name} at {builder.data_dir} is not in array_record format, which is "
            "needed for random access without TensorFlow; prepare it with "
            "--file_format=array_record."
        ) from e


def _label_feature(builder: tfds.core.DatasetBuilder) -> tuple[str, Any]:
    """(task, ClassLabel): a top-level ``label`` is classification, ``objects/label`` detection."""
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if isinstance(label, tfds.features.ClassLabel):
        return CLASSIFICATION, label
    objects = features["objects"] if "objects" in features else None
    if objects is not None and "label" in objects.keys():
        label = objects["label"]
        if isinstance(getattr(label, "feature", label), tfds.features.ClassLabel):
            return DETECTION, getattr(label, "feature", label)
    raise ValueError(
        f"{builder.name} at {builder.data_dir} has neither a top-level `label` ClassLabel "
        "(classification) nor `objects/label` (detection); its features are "
        f"{sorted(features.keys())}"
    )


def dataset_task(builder: tfds.core.DatasetBuilder) -> str:
    """``"detection"`` or ``"classification"``, from the builder's features."""
    return _label_feature(builder)[0]


def class_names(builder: tfds.core.DatasetBuilder) -> tuple[str, ...]:
    """Class names from the ``label`` (classification) or ``objects/label`` ClassLabel."""
    return tuple(_label_feature(builder)[1].names)


def dataset_info_from_builder(builder: tfds.core.DatasetBuilder) -> DatasetInfo:
    task, label = _label_feature(builder)
    names = tuple(label.names)
    return DatasetInfo(
        name=builder.name,
        num_classes=len(names),
        class_names=names,
        split_sizes={k: int(v.num_examples) for k, v in builder.info.splits.items()},
        task=task,
    )


def decode_image(data: Any) -> np.ndarray:
    """Encoded bytes (or an already decoded array) -> uint8 [H, W, 3] RGB."""
    if isinstance(data, np.ndarray) and data.ndim == 3:
        return data if data.shape[-1] == 3 else cv2.cvtColor(data, cv2.COLOR_GRAY2RGB)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("undecodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode(record: dict[str, Any]) -> tuple[Sample, int]:
    """A source record -> (sample with pixel xyxy boxes, image id). Crowd boxes are dropped."""
    image = decode_image(record["image"])
    h, w = image.shape[:2]
    objects = record.get("objects", {})
    bbox = np.asarray(objects.get("bbox", []), np.float32).reshape(-1, 4)
    labels = np.asarray(objects.get("label", []), np.int32).reshape(-1)
    crowd = objects.get("is_crowd", objects.get("is_difficult"))
    keep = np.ones(len(labels), bool)
    if crowd is not None:
        keep = ~np.asarray(crowd, bool).reshape(-1)
    # tfds (ymin, xmin, ymax, xmax) in [0, 1] -> pixel (x1, y1, x2, y2).
    boxes = bbox[keep][:, [1, 0, 3, 2]] * np.array([w, h, w, h], np.float32)
    return Sample(image, boxes.astype(np.float32), labels[keep]), int(record.get("image/id", -1))


def decode_classification(record: dict[str, Any]) -> tuple[np.ndarray, int]:
    """A classification record -> (uint8 [H, W, 3] RGB image, label)."""
    return decode_image(record["image"]), int(record["label"])
