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

from yolov4_jax import Error
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


class DatasetNotFoundError(Error, FileNotFoundError):
    """``config.data.name`` is not prepared in ``config.data.data_dir``; the message says how."""


class SplitNotFoundError(Error, KeyError):
    """The dataset has no such split; the message lists the ones it has."""

    def __str__(self) -> str:  # KeyError's would quote the message
        return str(self.args[0]) if self.args else ""


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
        raise DatasetNotFoundError(
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
        raise SplitNotFoundError(
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


# cv2 5 (and 4.10+) decodes straight to RGB, which saves a cvtColor of the whole image.
_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_COLOR = cv2.IMREAD_COLOR if _RGB is None else _RGB
# libjpeg's DCT scaling: the JPEG decoded at 1/f of its size for a fraction of the cost.
_REDUCED = {
    f: (getattr(cv2, f"IMREAD_REDUCED_COLOR_{f}") & ~cv2.IMREAD_COLOR) | _COLOR for f in (2, 4, 8)
}
# Markers that may come between a JPEG's start and its frame header: APPn, DQT, DHT, DRI, COM.
_HEADER_SEGMENTS = {*range(0xE0, 0xF0), 0xDB, 0xC4, 0xDD, 0xFE}
_SUPPORTED_FRAMES = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag (1-8) of an Exif block's first IFD; 1 if absent, None if malformed."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None

    def u16(at: int) -> int:
        return int.from_bytes(tiff[at : at + 2], order)

    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for k in range(u16(ifd)):
        entry = ifd + 2 + 12 * k
        if entry + 12 > len(tiff):
            return None
        if u16(entry) == 0x0112:  # Orientation, a SHORT stored in the entry itself
            return u16(entry + 8)
    return 1


def _jpeg_header(data: bytes) -> tuple[int, int, int] | None:
    """(stored height, stored width, Exif orientation) of an 8-bit Huffman JPEG, or None."""
    if not isinstance(data, bytes) or data[:2] != b"\xff\xd8":
        return None
    orientation, pos = 1, 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _SUPPORTED_FRAMES:
            if len(segment) < 6 or segment[0] != 8:  # 8-bit samples only
                return None
            height, width = (int.from_bytes(segment[i : i + 2], "big") for i in (1, 3))
            return (height, width, orientation) if height and width else None
        if marker not in _HEADER_SEGMENTS:
            return None
        if marker == 0xE1 and segment[:6] == b"Exif\0\0":
            orientation = _exif_orientation(segment[6:])
            if orientation is None:
                return None
        pos += 2 + length
    return None


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of an 8-bit Huffman JPEG as `decode_image` returns it, from its header.

    Reads the frame header (SOF0-2) and the Exif orientation, which cv2 applies (5-8 swap the
    sides). None for anything else or unexpected: not a JPEG, other frame types, a height left
    to a DNL marker, a malformed segment.
    """
    header = _jpeg_header(data)
    if header is None:
        return None
    height, width, orientation = header
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def decode_image(data: Any) -> np.ndarray:
    """Encoded bytes (or an already decoded array) -> uint8 [H, W, 3] RGB."""
    if isinstance(data, np.ndarray) and data.ndim == 3:
        return data if data.shape[-1] == 3 else cv2.cvtColor(data, cv2.COLOR_GRAY2RGB)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), _COLOR)
    if image is None:
        raise ValueError("undecodable image")
    return image if _RGB is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class EncodedJpeg:
    """A JPEG left encoded until the augmentation knows the resolution it needs.

    ``shape`` is the full image's (from `jpeg_size`); ``decode(f)`` decodes at 1/f of it with
    libjpeg's DCT scaling (``cv2.IMREAD_REDUCED_COLOR_f``): ceil(H / f) x ceil(W / f) pixels,
    pixel j covering full-resolution pixels [f j, f j + f). See augment.reduction_for.
    """

    def __init__(self, data: bytes, height: int, width: int, where: str = ""):
        self._data = data
        self.shape = (height, width, 3)
        self._where = where

    def _error(self, message: str) -> ValueError:
        return ValueError(f"{self._where}: {message}" if self._where else message)

    def decode(self, reduction: int = 1) -> np.ndarray:
        """uint8 [ceil(H / reduction), ceil(W / reduction), 3] RGB; reduction 1, 2, 4 or 8."""
        h, w = self.shape[:2]
        if reduction == 1:
            image = None
        else:
            image = cv2.imdecode(np.frombuffer(self._data, np.uint8), _REDUCED[reduction])
            if image is None:
                raise self._error("undecodable image")
            if _RGB is None:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        want = (-(-h // reduction), -(-w // reduction))
        if image is not None and image.shape[:2] == want:
            return image
        # Full resolution, or a reduced decode of an unexpected size: decode it all.
        try:
            image = decode_image(self._data)
        except ValueError as e:
            raise self._error(str(e)) from e
        if image.shape[:2] != (h, w):
            raise self._error(
                f"decodes to {image.shape[1]}x{image.shape[0]} but its header says {w}x{h} "
                "(config.data.fast_decode=False reads the size from the decoded image)"
            )
        if reduction == 1:
            return image
        return cv2.resize(image, want[::-1], interpolation=cv2.INTER_AREA)


def decode(
    record: dict[str, Any], *, deferred: bool = False, where: str = ""
) -> tuple[Sample, int]:
    """A source record -> (sample with pixel xyxy boxes, image id). Crowd boxes are dropped.

    With ``deferred``, a JPEG whose header gives its size stays an `EncodedJpeg` (the sample's
    ``image``), which the augmentation decodes at the resolution its canvas needs; ``where``
    names the record in its decoding errors. Other images are decoded here, and so are Exif
    rotated or mirrored JPEGs: cv2 turns them after the reduced decode, so the f x f blocks
    would start at the far edge of a reversed axis.
    """
    header = _jpeg_header(record["image"]) if deferred else None
    if header is not None and header[2] == 1:
        image = EncodedJpeg(record["image"], header[0], header[1], where)
    else:
        image = decode_image(record["image"])
    h, w = image.shape[:2]
    boxes, labels, crowd, _ = decode_annotations(record, h, w)
    keep = ~crowd
    return Sample(image, boxes[keep], labels[keep]), int(record.get("image/id", -1))


def decode_annotations(
    record: dict[str, Any], height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A detection record's objects, crowd ones included, in pixels of a ``height x width`` image.

    Returns ``boxes`` float32 [N, 4] xyxy, ``labels`` int32 [N], ``crowd`` bool [N]
    (``is_crowd``, or VOC's ``is_difficult``) and ``area`` float32 [N]: the annotation's own
    area in pixels (COCO's segmentation area) where the record has one, else -1.
    """
    objects = record.get("objects", {})
    bbox = np.asarray(objects.get("bbox", []), np.float32).reshape(-1, 4)
    labels = np.asarray(objects.get("label", []), np.int32).reshape(-1)
    crowd = objects.get("is_crowd", objects.get("is_difficult"))
    crowd = np.zeros(len(labels), bool) if crowd is None else np.asarray(crowd, bool).reshape(-1)
    area = objects.get("area")
    area = np.full(len(labels), -1.0, np.float32) if area is None else np.asarray(area, np.float32)
    # tfds (ymin, xmin, ymax, xmax) in [0, 1] -> pixel (x1, y1, x2, y2).
    boxes = bbox[:, [1, 0, 3, 2]] * np.array([width, height, width, height], np.float32)
    return boxes.astype(np.float32), labels, crowd, area.reshape(-1)


def decode_classification(record: dict[str, Any]) -> tuple[np.ndarray, int]:
    """A classification record -> (uint8 [H, W, 3] RGB image, label)."""
    return decode_image(record["image"]), int(record["label"])
