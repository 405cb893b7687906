"""Readers for local COCO, YOLO/darknet and class-subfolder folders, with input validation.

The readers return `Example`s (an image file and its boxes in tfds's normalised
(ymin, xmin, ymax, xmax), or its class) and the `Problem`s they found. Nothing is written
here; prepare.py decides from the problems whether to fail or to skip (``--skip-bad``) and
builds the dataset.

- COCO: an instances JSON (``images``, ``annotations``, ``categories``) and its image folder.
  Category ids map to contiguous labels in ascending id order; names are kept. ``bbox`` is
  [x, y, width, height] in pixels; ``iscrowd`` becomes ``is_crowd``.
- YOLO: an image folder, one ``.txt`` per image of ``class cx cy w h`` lines (normalised to
  the image), in a labels folder mirroring the image folder (default: beside each image), and
  a names file with one class name per line. A missing ``.txt`` means no objects, as darknet.
- Folder (classification, ImageNet-style): ``DIR/CLASS/.../IMAGE``; class names are the sorted
  subfolder names and labels follow that order. Images outside any class subfolder are problems.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable

import cv2
import numpy as np

from yolov4_jax import Error

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Boxes may stick out of the image by this much (pixels; annotation tools round) before
# counting as outside; they are clipped.
OUTSIDE_TOLERANCE_PX = 1.0

# Problem kinds. All but "no_boxes" make an image bad: prepare fails, or skips the image with
# --skip-bad. Images without boxes are kept as negatives (as darknet) unless --drop-empty.
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
SIZE_MISMATCH = "size_mismatch"
UNKNOWN_CATEGORY = "unknown_category"
UNKNOWN_IMAGE = "unknown_image"
OUTSIDE_IMAGE = "box_outside_image"
NON_POSITIVE_SIZE = "non_positive_size"
MALFORMED = "malformed_annotation"
NO_BOXES = "no_boxes"


class DataError(Error, ValueError):
    """Bad input that prepare refuses to convert."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem with the input: what, in which file, at which record."""

    kind: str
    file: str
    record: str
    message: str

    def __str__(self) -> str:
        return f"{self.file} [{self.record}]: {self.kind}: {self.message}"


@dataclasses.dataclass
class Example:
    """One image file and its boxes (tfds normalised ymin, xmin, ymax, xmax)."""

    path: str
    image_id: int
    filename: str
    bbox: np.ndarray  # [N, 4] float32
    labels: np.ndarray  # [N] int64
    is_crowd: np.ndarray  # [N] bool
    size: tuple[int, int] | None = None  # (height, width) the annotations expect
    bad: bool = False
    label: int = -1  # classification (folder format): the image's class; -1 for detection
    area: np.ndarray | None = None  # [N] float32: COCO's annotation area in pixels (-1: none)


def _check_box(
    x0: float, y0: float, x1: float, y1: float, w: float, h: float, tol_x: float, tol_y: float
) -> str | None:
    """The problem kind of a pixel (or normalised, with w = h = 1) box, or None."""
    if not all(np.isfinite([x0, y0, x1, y1])):
        return MALFORMED
    if x1 <= x0 or y1 <= y0:
        return NON_POSITIVE_SIZE
    if x0 < -tol_x or y0 < -tol_y or x1 > w + tol_x or y1 > h + tol_y:
        return OUTSIDE_IMAGE
    return None


def read_coco(images_dir: str, annotations: str) -> tuple[list[str], list[Example], list[Problem]]:
    """Reads a COCO instances JSON; returns (class names, examples, problems)."""
    try:
        with open(annotations) as f:
            coco = json.load(f)
    except FileNotFoundError as e:
        raise DataError(f"{annotations}: annotation file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{annotations}: not valid JSON: {e}") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{annotations}: missing the {key!r} list of a COCO instances file")
    for i, c in enumerate(coco["categories"]):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int):
            raise DataError(f"{annotations}: categories[{i}] needs an integer 'id', got {c!r}")
    counts = collections.Counter(c["id"] for c in coco["categories"])
    repeated = sorted(i for i, n in counts.items() if n > 1)
    if repeated:
        raise DataError(f"{annotations}: category ids {repeated} are listed more than once")
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    names = [str(c.get("name", c["id"])) for c in categories]

    problems: list[Problem] = []
    examples: dict[int, Example] = {}
    boxes: dict[int, list[tuple[list[float], int, bool]]] = {}
    for i, img in enumerate(coco["images"]):
        try:
            image_id, file_name = int(img["id"]), str(img["file_name"])
            size = (int(img["height"]), int(img["width"]))
        except (KeyError, TypeError, ValueError) as e:
            problems.append(Problem(MALFORMED, annotations, f"images[{i}]", f"bad entry: {e}"))
            continue
        if image_id in examples:
            raise DataError(
                f"{annotations}: images[{i}] repeats image id {image_id} (also "
                f"{examples[image_id].filename!r}); annotations could not be told apart"
            )
        examples[image_id] = Example(
            os.path.join(images_dir, file_name),
            image_id,
            file_name,
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), bool),
            size,
            area=np.zeros((0,), np.float32),
        )
        boxes[image_id] = []
    for i, ann in enumerate(coco["annotations"]):
        if not isinstance(ann, dict):
            problems.append(Problem(MALFORMED, annotations, f"annotations[{i}]", f"{ann!r}"))
            continue
        record = f"annotation id {ann.get('id', '?')}"
        image_id = ann.get("image_id")
        if image_id not in examples:
            problems.append(
                Problem(UNKNOWN_IMAGE, annotations, record, f"image_id {image_id} is not listed")
            )
            continue
        ex = examples[image_id]
        where = f"{record}, image id {image_id}"
        if ann.get("category_id") not in label_of:
            ex.bad = True
            problems.append(
                Problem(UNKNOWN_CATEGORY, ex.path, where, f"category_id {ann.get('category_id')}")
            )
            continue
        bbox = ann.get("bbox")
        numbers = isinstance(bbox, list) and len(bbox) == 4
        numbers = numbers and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
        )
        if not numbers:
            ex.bad = True
            problems.append(Problem(MALFORMED, ex.path, where, f"bbox {bbox!r}: need 4 numbers"))
            continue
        x, y, w, h = (float(v) for v in bbox)
        height, width = ex.size
        kind = _check_box(
            x, y, x + w, y + h, width, height, OUTSIDE_TOLERANCE_PX, OUTSIDE_TOLERANCE_PX
        )
        if kind is not None:
            ex.bad = True
            problems.append(
                Problem(
                    kind, ex.path, where, f"bbox [x, y, w, h] {bbox} in a {width}x{height} image"
                )
            )
            continue
        area = ann.get("area", -1.0)
        area = float(area) if isinstance(area, int | float) and not isinstance(area, bool) else -1.0
        boxes[image_id].append(
            ([x, y, x + w, y + h], label_of[ann["category_id"]], bool(ann.get("iscrowd", 0)), area)
        )
    for image_id, ex in examples.items():
        _set_boxes(ex, boxes[image_id], ex.size)
    return names, list(examples.values()), problems


def _set_boxes(ex: Example, items: list[tuple], size) -> None:
    """Stores (xyxy pixels, label, crowd[, area]) items on ``ex`` in tfds's box format."""
    if not items:
        return
    xyxy = np.array([item[0] for item in items], np.float64)
    h, w = size
    yxyx = xyxy[:, [1, 0, 3, 2]] / np.array([h, w, h, w])
    ex.bbox = np.clip(yxyx, 0.0, 1.0).astype(np.float32)
    ex.labels = np.array([item[1] for item in items], np.int64)
    ex.is_crowd = np.array([item[2] for item in items], bool)
    if len(items[0]) > 3:
        ex.area = np.array([item[3] for item in items], np.float32)


def read_names(names_file: str) -> list[str]:
    """A darknet names file: one class name per line."""
    try:
        with open(names_file) as f:
            names = [line.strip() for line in f]
    except FileNotFoundError as e:
        raise DataError(f"{names_file}: names file not found") from e
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise DataError(f"{names_file}: expected one non-empty class name per line")
    return names


def _image_files(images_dir: str) -> list[str]:
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: image folder not found")
    found = []
    for root, _, files in os.walk(images_dir):
        found += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)


def read_yolo(
    images_dir: str, labels_dir: str | None, names_file: str, first_id: int = 0
) -> tuple[list[str], list[Example], list[Problem]]:
    """Reads a YOLO/darknet folder; returns (class names, examples, problems)."""
    names = read_names(names_file)
    problems: list[Problem] = []
    examples = []
    for i, path in enumerate(_image_files(images_dir)):
        rel = os.path.relpath(path, images_dir)
        label_path = os.path.splitext(os.path.join(labels_dir or images_dir, rel))[0] + ".txt"
        ex = Example(
            path,
            first_id + i,
            rel,
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), bool),
        )
        examples.append(ex)
        if not os.path.exists(label_path):
            continue  # darknet: no label file, no objects
        items = []
        with open(label_path) as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = f"line {n}"
            fields = line.split()
            try:
                if len(fields) != 5:
                    raise ValueError(f"expected 5 fields, got {len(fields)}")
                cls = int(fields[0])
                cx, cy, w, h = (float(v) for v in fields[1:])
            except ValueError as e:
                ex.bad = True
                problems.append(Problem(MALFORMED, label_path, record, f"{line!r}: {e}"))
                continue
            if not 0 <= cls < len(names):
                ex.bad = True
                problems.append(
                    Problem(
                        UNKNOWN_CATEGORY,
                        label_path,
                        record,
                        f"class {cls} not in the {len(names)} names of {names_file}",
                    )
                )
                continue
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            kind = _check_box(x0, y0, x1, y1, 1.0, 1.0, 1e-3, 1e-3)
            if kind is not None:
                ex.bad = True
                problems.append(
                    Problem(kind, label_path, record, f"{line!r} (normalised cx cy w h)")
                )
                continue
            items.append(([y0, x0, y1, x1], cls))
        if items:
            bbox = np.array([b for b, _ in items], np.float32)
            ex.bbox = np.clip(bbox, 0.0, 1.0)
            ex.labels = np.array([c for _, c in items], np.int64)
            ex.is_crowd = np.zeros(len(items), bool)
    return names, examples, problems


def read_folder(
    images_dir: str, class_names: list[str] | None = None, first_id: int = 0
) -> tuple[list[str], list[Example], list[Problem]]:
    """Reads a folder of class subfolders; returns (class names, examples, problems).

    ``class_names`` (the training classes, when reading a validation folder) fixes the labels;
    a subfolder outside it is an error, a class without a subfolder is fine.
    """
    if not os.path.isdir(images_dir):
        raise DataError(f"{images_dir}: image folder not found")
    subfolders = sorted(
        d
        for d in os.listdir(images_dir)
        if not d.startswith(".") and os.path.isdir(os.path.join(images_dir, d))
    )
    if class_names is None:
        if not subfolders:
            raise DataError(
                f"{images_dir}: no class subfolders (expected {images_dir}/CLASS_NAME/IMAGE)"
            )
        class_names = subfolders
    elif unknown := sorted(set(subfolders) - set(class_names)):
        raise DataError(
            f"{images_dir}: class subfolders {unknown} are not among the training classes "
            f"{list(class_names)}"
        )
    label_of = {name: i for i, name in enumerate(class_names)}
    problems: list[Problem] = []
    examples = []
    for path in _image_files(images_dir):
        rel = os.path.relpath(path, images_dir)
        parts = rel.split(os.sep)
        if any(p.startswith(".") for p in parts):
            continue  # hidden folders (.ipynb_checkpoints, ...) are not data
        image_id = first_id + len(examples)
        ex = Example(
            path,
            image_id,
            rel,
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int64),
            np.zeros((0,), bool),
            label=label_of.get(parts[0], -1) if len(parts) > 1 else -1,
        )
        if ex.label < 0:
            ex.bad = True
            problems.append(
                Problem(
                    UNKNOWN_CATEGORY,
                    path,
                    f"image id {image_id}",
                    f"not inside a class subfolder of {images_dir}",
                )
            )
        examples.append(ex)
    return list(class_names), examples, problems


def truncation(data: bytes) -> str | None:
    """Why a JPEG or PNG file is cut short, or None. `cv2.imread` decodes a truncated JPEG
    without an error (the missing rows come out grey), so the end of the file is checked: a JPEG's
    last scan (SOS marker FF DA) must be followed by its end-of-image marker (FF D9, which
    cannot occur inside entropy-coded data); a PNG must have its IEND chunk."""
    if data[:3] == b"\xff\xd8\xff":
        scan = data.rfind(b"\xff\xda")
        if scan < 0 or data.find(b"\xff\xd9", scan) < 0:
            return "truncated JPEG: no end-of-image marker after the last scan"
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and data.rfind(b"IEND") < 0:
        return "truncated PNG: no IEND chunk"
    return None


def check_images(examples: Iterable[Example]) -> list[Problem]:
    """Decodes every image: missing, unreadable, truncated and wrong-size files are problems."""
    problems = []
    for ex in examples:
        if not os.path.isfile(ex.path):
            problems.append(
                Problem(MISSING_IMAGE, ex.path, f"image id {ex.image_id}", "no such file")
            )
            ex.bad = True
            continue
        with open(ex.path, "rb") as f:
            data = f.read()
        broken = truncation(data)
        image = None if broken else cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        broken = broken or ("cannot decode" if image is None else None)
        if broken:
            problems.append(Problem(UNREADABLE_IMAGE, ex.path, f"image id {ex.image_id}", broken))
            ex.bad = True
            continue
        if ex.size is not None and tuple(image.shape[:2]) != tuple(ex.size):
            problems.append(
                Problem(
                    SIZE_MISMATCH,
                    ex.path,
                    f"image id {ex.image_id}",
                    f"file is {image.shape[1]}x{image.shape[0]}, annotations say "
                    f"{ex.size[1]}x{ex.size[0]}",
                )
            )
            ex.bad = True
    return problems
