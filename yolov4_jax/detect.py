"""Detect objects in image files with a darknet cfg and weights, or a training run's checkpoint.

    python -m yolov4_jax.detect --cfg yolov4.cfg --weights yolov4.weights --out DIR IMAGE...
    python -m yolov4_jax.detect --workdir WORKDIR [--checkpoint best|latest] --out DIR IMAGE...
        [--size 608 | --size 640x480] [--letterbox] [--names coco.names] [--thresh .25]
        [--nms_thresh .45] [--nms_kind greedy|diou] [--max_detections 100]
        [--dtype float32|bfloat16] [--conv_algorithm auto|direct|winograd|mkl]

Writes, for each image, ``DIR/<stem>.png`` (the image with its boxes, class names and scores
drawn) and ``DIR/<stem>.json``: a list of ``{"box": [x1, y1, x2, y2], "score", "label",
"name"}``, boxes in pixels of the original image, highest score first.

Each image is resized to the network input, stretched as darknet's detector does by default
(``--letterbox`` keeps its aspect ratio and pads with grey), then decoded and suppressed by the
shared `yolov4_jax.evaluation.prediction` predict function, which compiles once per input size.
``--dtype bfloat16 --conv_algorithm mkl`` computes the convolutions in bfloat16 on the CPU's
bf16 units through Intel oneMKL (`yolov4_jax.ops.cpu_gemm`, ``pip install mkl``); outputs,
decoding and NMS stay float32.
An image that cannot be read is reported with its path and skipped; the command then exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from yolov4_jax import Error, cli
from yolov4_jax.data.augment import Sample, empty_boxes, resize_to_canvas
from yolov4_jax.data.formats import read_names
from yolov4_jax.data.names import COCO_NAMES
from yolov4_jax.data.pipeline import boxes_to_original
from yolov4_jax.data.preview import annotate
from yolov4_jax.evaluation import loading
from yolov4_jax.evaluation.prediction import (
    NmsOptions,
    make_predict_fn,
    nms_options_for,
    prepare_variables,
    with_compute,
)
from yolov4_jax.models import Network, check_input_size
from yolov4_jax.ops.conv import CONV_ALGORITHMS


class DetectError(Error, ValueError):
    """A bad input of the detector; the message names the file or option."""


@dataclasses.dataclass(frozen=True)
class ImageDetections:
    """Detections of one image, boxes in its pixels."""

    path: str
    boxes: np.ndarray  # [K, 4] xyxy, original image pixels
    scores: np.ndarray  # [K]
    labels: np.ndarray  # [K] int

    def to_json(self, names: Sequence[str]) -> list[dict[str, Any]]:
        return [
            {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 4),
                "label": int(label),
                "name": names[label],
            }
            for box, score, label in zip(self.boxes, self.scores, self.labels, strict=True)
        ]


def class_names(num_classes: int, names_file: str | None = None) -> list[str]:
    """Names from `names_file`, else COCO's for 80 classes, else ``class_<i>``."""
    if names_file is not None:
        names = read_names(names_file)
        if len(names) != num_classes:
            raise DetectError(
                f"{names_file}: {len(names)} class names, but the model has {num_classes} classes"
            )
        return names
    if num_classes == len(COCO_NAMES):
        return list(COCO_NAMES)
    return [f"class_{i}" for i in range(num_classes)]


def read_image(path: str) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (grey and alpha images converted)."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as e:
        raise DetectError(f"{path}: cannot read image ({e.strerror or e})") from None
    image = None
    if data.size:
        try:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error:
            image = None
    if image is None:
        raise DetectError(f"{path}: cannot decode image (corrupt, empty or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _output_paths(paths: Sequence[str], out_dir: str) -> list[str]:
    """``out_dir/<stem>`` per image; an error if two images share a stem or would be replaced."""
    stems: dict[str, str] = {}
    outputs = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise DetectError(
                f"{stems[stem]} and {path} would both write {os.path.join(out_dir, stem)}.*"
            )
        stems[stem] = path
        out = os.path.join(out_dir, stem)
        if os.path.abspath(out + ".png") == os.path.abspath(path):
            raise DetectError(f"{path}: the annotated image would replace the input")
        outputs.append(out)
    return outputs


def detect_images(
    model: Network,
    variables: Any,
    paths: Sequence[str],
    out_dir: str,
    *,
    size: tuple[int, int],
    letterbox: bool,
    names: Sequence[str],
    options: NmsOptions,
) -> list[ImageDetections]:
    """Runs the detector on image files and writes ``<stem>.png`` and ``<stem>.json`` for each.

    Args:
      model, variables: the detector, from any source (darknet files, a checkpoint).
      paths: image files.
      out_dir: output folder (created).
      size: the network input (height, width).
      letterbox: keep the aspect ratio (grey padding) instead of stretching.
      names: class names, indexed by label.
      options: score threshold and NMS settings.

    Returns:
      The detections of every image that could be read. Unreadable images are skipped and,
      after the others are written, raised together as one `DetectError`.
    """
    outputs = _output_paths(paths, out_dir)
    check_input_size(model, size, DetectError)
    os.makedirs(out_dir, exist_ok=True)
    predict = make_predict_fn(model, options)  # all images share `size`: one compilation
    variables = prepare_variables(model, variables)  # Winograd kernel transforms, once
    results, errors = [], []
    for path, out in zip(paths, outputs, strict=True):
        try:
            image = read_image(path)
        except DetectError as e:
            errors.append(str(e))
            continue
        canvas = resize_to_canvas(Sample(image, *empty_boxes()), size, letterbox).image
        detections = predict(variables, canvas[None])
        valid = np.asarray(detections.valid[0])
        boxes = boxes_to_original(
            np.asarray(detections.boxes[0])[valid], image.shape[:2], size, letterbox
        )
        result = ImageDetections(
            path,
            boxes,
            np.asarray(detections.scores[0])[valid],
            np.asarray(detections.classes[0])[valid],
        )
        # Lines and labels grow with the image, as darknet's draw_detections (height * .006).
        thickness = max(1, round(0.002 * max(image.shape[:2])))
        drawn = annotate(image, boxes, result.labels, names, result.scores, thickness=thickness)
        if not cv2.imwrite(out + ".png", drawn):
            raise DetectError(f"{out}.png: cannot write image")
        rows = [json.dumps(d) for d in result.to_json(names)]
        with open(out + ".json", "w") as f:  # one detection per line
            f.write("[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n")
        results.append(result)
    if errors:
        raise DetectError(
            f"{len(errors)} of {len(paths)} images could not be read (the others were written):\n"
            + "\n".join(errors)
        )
    return results


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m yolov4_jax.detect",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--cfg", help="darknet .cfg (with --weights)")
    parser.add_argument("--weights", help="darknet .weights (with --cfg)")
    parser.add_argument(
        "--workdir", help="a training workdir: its model and checkpoint instead of --cfg/--weights"
    )
    parser.add_argument(
        "--checkpoint",
        choices=("best", "latest"),
        default="best",
        help="which checkpoint of --workdir (default: best)",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--size",
        type=cli.parse_size,
        help="network input, N or WIDTHxHEIGHT (default: the cfg's [net] width and height)",
    )
    parser.add_argument(
        "--letterbox",
        action="store_true",
        help="keep the aspect ratio, pad with grey (default: stretch, as darknet)",
    )
    parser.add_argument(
        "--names",
        help="class names, one per line (default: COCO's for 80 classes, else class_<i>)",
    )
    parser.add_argument(
        "--thresh", type=float, default=0.25, help="score threshold (default: %(default)s)"
    )
    parser.add_argument(
        "--nms_thresh",
        "--nms-thresh",
        type=float,
        default=0.45,
        help="NMS IoU threshold (default: %(default)s)",
    )
    parser.add_argument(
        "--nms_kind",
        "--nms-kind",
        choices=["greedy", "diou"],
        help="NMS overlap measure (default: the cfg's nms_kind; greedynms is DIoU-NMS)",
    )
    parser.add_argument(
        "--max_detections",
        "--max-detections",
        type=int,
        default=100,
        help="per image (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="compute dtype (default: the model's; outputs are float32 either way)",
    )
    parser.add_argument(
        "--conv_algorithm",
        "--conv-algorithm",
        choices=CONV_ALGORITHMS,
        help="model.conv_algorithm (default: the model's); mkl: oneMKL on the CPU",
    )
    return parser.parse_args(argv)


def load_model(args: argparse.Namespace) -> loading.LoadedModel:
    """The model of the command line's source (`loading.load_model`)."""
    if not args.workdir and not (args.cfg and args.weights):
        raise DetectError("pass --cfg and --weights (darknet files), or --workdir")
    return loading.load_model(
        cfg=args.cfg, weights=args.weights, workdir=args.workdir, checkpoint=args.checkpoint
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        missing = [p for p in args.images if not os.path.isfile(p)]
        if missing:  # checked before the (slow) model load
            raise DetectError("\n".join(f"{p}: image not found" for p in missing))
        loaded = load_model(args)
        variables, size, trained_names = loaded.variables, loaded.size, loaded.class_names
        model = with_compute(loaded.model, args.dtype, args.conv_algorithm)
        size = args.size or size
        if size is None:
            raise DetectError(f"{args.cfg}: no [net] width and height; pass --size")
        if not model.heads:
            raise DetectError(f"{args.cfg}: no [yolo] layers, so the network is not a detector")
        overrides = dict(
            score_threshold=args.thresh,
            iou_threshold=args.nms_thresh,
            max_detections=args.max_detections,
        )
        if args.nms_kind is not None:
            overrides["kind"] = args.nms_kind
        options = nms_options_for(model.heads, **overrides)
        if trained_names is not None and args.names is None:
            names = list(trained_names)
        else:
            names = class_names(model.heads[0].classes, args.names)
        results = detect_images(
            model,
            variables,
            args.images,
            args.out,
            size=size,
            letterbox=args.letterbox,
            names=names,
            options=options,
        )
    except Error as e:  # the project's own errors: one line (yolov4_jax.cli)
        return cli.report(e)
    for result in results:
        print(f"{result.path}: {len(result.scores)} detections")
    print(f"wrote {len(results)} annotated images and JSON files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
