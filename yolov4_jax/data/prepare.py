"""Converts a local COCO, YOLO or class-subfolder folder into a tfds dataset (array_record).

    python -m yolov4_jax.data.prepare --format coco --images DIR --annotations FILE \\
        [--val-images DIR --val-annotations FILE | --val-fraction F] --name NAME --data-dir DIR
    python -m yolov4_jax.data.prepare --format yolo --images DIR [--labels DIR] --names FILE \\
        [--val-images DIR [--val-labels DIR] | --val-fraction F] --name NAME --data-dir DIR
    python -m yolov4_jax.data.prepare --format folder --images DIR \\
        [--val-images DIR | --val-fraction F] --name NAME --data-dir DIR

``--format folder`` is for classification (backbone pretraining): ``DIR/CLASS/IMAGE``, class
names the sorted subfolder names; it writes the features of ``yolov4_synthetic_cls`` (``image``,
``image/id``, ``image/filename``, ``label``).

Then train with ``--config.data.name=NAME --config.data.data_dir=DIR``. Every image is decoded
and every box checked first; each problem is reported with its file and record. By default any
problem stops the conversion (nothing is written); ``--skip-bad`` skips the affected images (and
annotations of unknown images) and counts them. Images without boxes are kept as negatives,
as darknet does, unless ``--drop-empty``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import re
import shutil
import sys
from collections.abc import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import registered

from yolov4_jax import Error, cli
from yolov4_jax.data import formats, sources, synthetic
from yolov4_jax.data.formats import DataError, Example, Problem

_MAX_LISTED = 20


@dataclasses.dataclass
class Report:
    """What prepare did: examples per split and every problem met."""

    split_sizes: dict[str, int]
    problems: list[Problem]
    skipped_images: int
    empty_images: int
    dataset_dir: str
    warnings: list[str] = dataclasses.field(default_factory=list)  # what the user should know

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(p.kind for p in self.problems))


def _encoded_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"\xff\xd8\xff" or data[:8] == b"\x89PNG\r\n\x1a\n":
        return data  # JPEG / PNG: store the file as is
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    ok, png = cv2.imencode(".png", image)
    if not ok:
        raise DataError(f"{path}: cannot re-encode as PNG")
    return png.tobytes()


def _builder_class(
    name: str, class_names: Sequence[str], splits: dict[str, list[Example]], task: str
):
    """A GeneratorBasedBuilder named ``name`` over already validated examples."""
    classification = task == sources.CLASSIFICATION
    examples = [ex for split in splits.values() for ex in split]
    with_area = bool(examples) and all(ex.area is not None for ex in examples)

    def _info(self) -> tfds.core.DatasetInfo:
        features = (
            synthetic.classification_features(class_names)
            if classification
            else synthetic.detection_features(class_names, with_area)
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Converted by yolov4_jax.data.prepare ({name}).",
            features=features,
        )

    def _split_generators(self, dl_manager):  # noqa: ARG001
        return {split: self._generate_examples(examples) for split, examples in splits.items()}

    def _generate_examples(self, examples: list[Example]):
        for ex in examples:
            record = {
                "image": _encoded_bytes(ex.path),
                "image/id": ex.image_id,
                "image/filename": ex.filename,
            }
            if classification:
                record["label"] = ex.label
            else:
                record["objects"] = {
                    "bbox": ex.bbox,
                    "label": ex.labels,
                    "is_crowd": ex.is_crowd,
                }
                if with_area:
                    record["objects"]["area"] = ex.area
            yield ex.image_id, record

    # Built per call and never registered, so any NAME can be prepared in one process.
    with registered.skip_registration():
        return type(
            "LocalDetection",
            (tfds.core.GeneratorBasedBuilder,),
            {
                "name": name,
                "VERSION": tfds.core.Version("1.0.0"),
                "RELEASE_NOTES": {"1.0.0": "Converted from a local folder."},
                "_info": _info,
                "_split_generators": _split_generators,
                "_generate_examples": _generate_examples,
            },
        )


def _read(
    fmt: str,
    images: str,
    annotations: str | None,
    labels: str | None,
    names: str | None,
    first_id: int = 0,
    class_names: list[str] | None = None,
):
    if fmt == "folder":
        if annotations or labels or names:
            raise DataError(
                "--format folder takes the classes from the subfolder names; --annotations, "
                "--labels and --names do not apply"
            )
        return formats.read_folder(images, class_names, first_id=first_id)
    if fmt == "coco":
        if not annotations:
            raise DataError("--format coco needs --annotations (an instances JSON)")
        return formats.read_coco(images, annotations)
    if fmt == "yolo":
        if not names:
            raise DataError("--format yolo needs --names (one class name per line)")
        return formats.read_yolo(images, labels, names, first_id=first_id)
    raise DataError(f"unknown --format {fmt!r}: coco, yolo or folder")


def prepare(
    *,
    format: str,  # noqa: A002 - the CLI flag's name
    images: str,
    name: str,
    data_dir: str,
    annotations: str | None = None,
    labels: str | None = None,
    names: str | None = None,
    val_images: str | None = None,
    val_annotations: str | None = None,
    val_labels: str | None = None,
    val_fraction: float = 0.0,
    skip_bad: bool = False,
    drop_empty: bool = False,
    overwrite: bool = False,
    seed: int = 0,
) -> Report:
    """Validates a local folder and writes it as tfds dataset ``name`` in ``data_dir``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise DataError(f"--name {name!r}: use lower-case letters, digits and underscores")
    if name in (sources.SYNTHETIC_NAME, sources.SYNTHETIC_CLS_NAME):
        raise DataError(f"--name {name!r} is an embedded dataset's name")
    if val_images and val_fraction:
        raise DataError("give either --val-images or --val-fraction, not both")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val-fraction {val_fraction} must be in [0, 1)")
    class_names, train, problems = _read(format, images, annotations, labels, names)
    splits = {"train": train}
    if val_images:
        val_names, val, val_problems = _read(
            format,
            val_images,
            val_annotations,
            val_labels,
            names,
            first_id=len(train),
            class_names=class_names if format == "folder" else None,
        )
        if val_names != class_names:
            raise DataError(
                f"validation classes {val_names} differ from training classes {class_names}"
            )
        splits["validation"] = val
        problems += val_problems
    all_examples = [ex for split in splits.values() for ex in split]
    problems += formats.check_images(ex for ex in all_examples if not ex.bad)

    for p in problems:
        logging.warning("prepare: %s", p)
    bad = [ex for ex in all_examples if ex.bad]
    if problems and not skip_bad:
        listed = "\n  ".join(str(p) for p in problems[:_MAX_LISTED])
        more = (
            f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        )
        raise DataError(
            f"{len(problems)} problem(s) in the input ({len(bad)} image(s) affected); nothing "
            f"was written:\n  {listed}{more}\nFix them, or pass --skip-bad to skip the affected "
            "images and annotations."
        )
    empty = 0
    for split, examples in splits.items():
        kept = [ex for ex in examples if not ex.bad]
        # Classification examples (label >= 0) have no boxes and are never "empty".
        empty += sum(len(ex.labels) == 0 and ex.label < 0 for ex in kept)
        if drop_empty:
            kept = [ex for ex in kept if len(ex.labels) or ex.label >= 0]
        splits[split] = kept
    if val_fraction:
        order = np.random.default_rng(seed).permutation(len(splits["train"]))
        n_val = max(1, int(round(val_fraction * len(order))))
        chosen = set(order[:n_val].tolist())
        splits["validation"] = [ex for i, ex in enumerate(splits["train"]) if i in chosen]
        splits["train"] = [ex for i, ex in enumerate(splits["train"]) if i not in chosen]
    for split, examples in splits.items():
        if not examples:
            raise DataError(f"split {split!r} has no images left to write")
    warnings = []
    if format != "folder" and not any(len(ex.labels) for e in splits.values() for ex in e):
        warnings.append(
            "no image has a box: a detector cannot learn from this dataset (are the "
            "annotations or labels the right ones?)"
        )
    if "validation" not in splits:
        warnings.append(
            "no validation split was asked for (--val-fraction F or --val-images DIR): train "
            "with --config.train.eval_split='' (no evaluation), or prepare again with one"
        )

    data_dir = sources.resolve_data_dir(data_dir)
    target = os.path.join(data_dir, name)
    if os.path.exists(target):
        if not overwrite:
            raise DataError(f"{target} already exists; pass --overwrite to replace it")
        shutil.rmtree(target)
    task = sources.CLASSIFICATION if format == "folder" else sources.DETECTION
    builder = _builder_class(name, class_names, splits, task)(
        data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare()
    report = Report(
        split_sizes={k: len(v) for k, v in splits.items()},
        problems=problems,
        skipped_images=len(bad),
        empty_images=empty,
        dataset_dir=str(builder.data_dir),
        warnings=warnings,
    )
    for warning in warnings:
        logging.warning("prepare: %s", warning)
    logging.info(
        "prepare: wrote %s to %s; %s; skipped %d bad image(s), %d without boxes %s; problems %s",
        name,
        report.dataset_dir,
        report.split_sizes,
        report.skipped_images,
        empty,
        "dropped" if drop_empty else "kept",
        report.counts() or "none",
    )
    return report


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yolov4_jax.data.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", required=True, choices=["coco", "yolo", "folder"])
    parser.add_argument("--images", required=True, help="training image folder")
    parser.add_argument("--annotations", help="COCO: training instances JSON")
    parser.add_argument("--labels", help="YOLO: label folder mirroring --images (default: same)")
    parser.add_argument("--names", help="YOLO: names file, one class per line")
    parser.add_argument(
        "--val-images", help="validation image folder (folder: the same class subfolders)"
    )
    parser.add_argument("--val-annotations", help="COCO: validation instances JSON")
    parser.add_argument("--val-labels", help="YOLO: validation label folder")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="hold out this fraction of training images as validation",
    )
    parser.add_argument("--name", required=True, help="tfds name (config.data.name)")
    parser.add_argument("--data-dir", required=True, help="tfds data dir (config.data.data_dir)")
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip and count bad images instead of failing"
    )
    parser.add_argument("--drop-empty", action="store_true", help="drop images without boxes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of --val-fraction's split")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        report = prepare(**{k: v for k, v in vars(args).items()})
    except Error as e:  # the project's own errors: one line (yolov4_jax.cli)
        return cli.report(e)
    # Printed, not logged: a root logger already set up (by an import) would hide INFO lines.
    print(
        f"{report.dataset_dir}: {report.split_sizes}, skipped {report.skipped_images}, "
        f"without boxes {report.empty_images}, problems {report.counts() or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
