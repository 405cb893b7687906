"""Anchors fitted to a dataset: k-means of the boxes' (w, h) with distance 1 - IoU.

    python -m yolov4_jax.anchors --config=configs/base.py --num 9 [--size 608] [--split train] \\
        [--max_images N] [--seed 0] [--config.data.name=NAME ...]

As darknet's ``detector calc_anchors`` (detector.c::calc_anchors, matrix.c::do_kmeans; the
YOLOv2 paper, section "Dimension Clusters"): every box's width and height in pixels of the
network input, k-means with distance 1 - IoU of boxes centred at the origin, clusters sorted by
area. Prints darknet's ``anchors = w,h, ...`` line, the mean best IoU ("avg IoU") of the boxes
with their best anchor, the same for the model's current anchors, and a
``--config.model.anchors="((w, h), ...)"`` line to paste into a training command.

Differences from darknet, all on purpose:
- Initial centroids are k-means++ seeded (1 - IoU distance) by default; darknet picks k random
  boxes (``init="random"`` here, drawn among distinct sizes). Both are deterministic per seed.
- An empty cluster is re-seeded with the box worst covered by the current centroids; darknet
  keeps the empty cluster's old centroid.
- Letterboxed configs scale boxes as the letterboxed image (darknet stretches in calc_anchors).
Like darknet, a centroid is the mean (w, h) of its boxes, which is not the size that maximises
their mean IoU; and the sizes are those of the un-augmented images (jitter, mosaic and random
shapes are ignored).
"""

from __future__ import annotations

import logging
import sys

import ml_collections
import numpy as np

from yolov4_jax import cli
from yolov4_jax.darknet import parse_cfg
from yolov4_jax.data import augment, sources
from yolov4_jax.models import factory, specs

INITS = ("kmeans++", "random")


def _check_sizes(sizes: np.ndarray, name: str) -> np.ndarray:
    sizes = np.asarray(sizes, np.float64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"{name} must be [N, 2] (w, h) pairs, got shape {sizes.shape}")
    if not np.all(np.isfinite(sizes)) or np.any(sizes <= 0):
        raise ValueError(f"{name} must hold finite positive widths and heights")
    return sizes


def shape_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of (w, h) boxes centred at the origin: [N, 2], [K, 2] -> [N, K]."""
    sizes = _check_sizes(sizes, "sizes")
    anchors = _check_sizes(anchors, "anchors")
    inter = np.minimum(sizes[:, None, 0], anchors[None, :, 0]) * np.minimum(
        sizes[:, None, 1], anchors[None, :, 1]
    )
    union = (sizes[:, 0] * sizes[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None] - inter
    return inter / union


def mean_best_iou(sizes: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the IoU with their best anchor (darknet's "avg IoU", as a fraction)."""
    return float(shape_iou(sizes, anchors).max(axis=1).mean())


def _initial_centroids(
    distinct: np.ndarray, counts: np.ndarray, k: int, init: str, rng: np.random.Generator
) -> np.ndarray:
    """k distinct sizes of the data, as the first centroids."""
    p = counts / counts.sum()
    if init == "random":
        return distinct[rng.choice(len(distinct), size=k, replace=False, p=p)]
    # k-means++ (Arthur & Vassilvitskii 2007) with distance 1 - IoU: each next centroid is a box
    # drawn with probability proportional to its squared distance to the nearest centroid.
    chosen = [int(rng.choice(len(distinct), p=p))]
    for _ in range(1, k):
        d = 1.0 - shape_iou(distinct, distinct[chosen]).max(axis=1)
        weight = counts * d**2
        chosen.append(int(rng.choice(len(distinct), p=weight / weight.sum())))
    return distinct[chosen]


def kmeans_anchors(
    sizes: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 300,
    init: str | np.ndarray = "kmeans++",
) -> tuple[np.ndarray, float]:
    """k anchors for boxes' sizes: ([k, 2] (w, h) sorted by area, mean best IoU of the boxes).

    Lloyd iterations as darknet's do_kmeans: assign each box to the centroid of highest IoU,
    move each centroid to the mean (w, h) of its boxes, stop when no assignment changes (or
    after ``max_iter`` updates). Deterministic for a seed. ``init``: "kmeans++", "random" (k
    distinct box sizes, as darknet's random_centers) or a [k, 2] array of starting centroids
    (for example the model's current anchors).
    """
    sizes = _check_sizes(sizes, "sizes")
    if isinstance(init, str) and init not in INITS:
        raise ValueError(f"init must be one of {INITS} or a [k, 2] array, got {init!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    distinct, counts = np.unique(sizes, axis=0, return_counts=True)
    if k > len(distinct):
        raise ValueError(
            f"k={k} anchors but only {len(distinct)} distinct box sizes among {len(sizes)} boxes; "
            "ask for fewer anchors or use more images"
        )
    rng = np.random.default_rng(seed)
    if isinstance(init, str):
        centroids = _initial_centroids(distinct, counts, k, init, rng)
    else:
        centroids = _check_sizes(init, "init")
        if len(centroids) != k:
            raise ValueError(f"init holds {len(centroids)} centroids, expected k={k}")
    assignment = np.full(len(sizes), -1)
    for iteration in range(max_iter + 1):
        new_assignment = shape_iou(sizes, centroids).argmax(axis=1)  # [N]
        if np.array_equal(new_assignment, assignment) or iteration == max_iter:
            break
        assignment = new_assignment
        counts_k = np.bincount(assignment, minlength=k)
        sums = np.stack(
            [np.bincount(assignment, weights=sizes[:, c], minlength=k) for c in (0, 1)], axis=1
        )
        full = counts_k > 0
        centroids = centroids.copy()
        centroids[full] = sums[full] / counts_k[full, None]
        for j in np.flatnonzero(~full):
            # An empty cluster restarts at the box worst covered by the other centroids.
            best = shape_iou(sizes, centroids[np.arange(k) != j]).max(axis=1)
            centroids[j] = sizes[np.argmin(best)]
    logging.info("k-means: %d clusters of %d boxes, %d updates", k, len(sizes), iteration)
    centroids = centroids[np.argsort(centroids[:, 0] * centroids[:, 1], kind="stable")]
    return centroids, mean_best_iou(sizes, centroids)


def _record_sizes(record: dict, size: int, letterbox: bool) -> np.ndarray:
    """(w, h) of one record's boxes in pixels of the size x size network input: [n, 2]."""
    objects = record.get("objects", {})
    bbox = np.asarray(objects.get("bbox", []), np.float64).reshape(-1, 4)
    # Crowd (and VOC difficult) boxes are dropped, as sources.decode does.
    crowd = objects.get("is_crowd", objects.get("is_difficult"))
    if crowd is not None:
        bbox = bbox[~np.asarray(crowd, bool).reshape(-1)]
    wh = bbox[:, [3, 2]] - bbox[:, [1, 0]]  # tfds (ymin, xmin, ymax, xmax) -> (w, h), fractions
    if not letterbox:
        return wh * size  # stretched: w_pixels * size / image_w
    # Letterboxed: the image keeps its aspect ratio (augment.letterbox_geometry). The image is
    # decoded as the pipeline does, so EXIF rotations give the same width and height.
    h, w = sources.decode_image(record["image"]).shape[:2]
    new_h, new_w, _, _ = augment.letterbox_geometry(h, w, (size, size))
    return wh * np.array([new_w, new_h], np.float64)


def box_sizes(
    config: ml_collections.ConfigDict,
    split: str = "train",
    max_images: int | None = None,
    *,
    size: int | None = None,
) -> np.ndarray:
    """[N, 2] (w, h) of the boxes of ``config.data.name``'s split, in network-input pixels.

    ``size`` (default ``config.data.image_size``) is the square network input; boxes are
    stretched with the image, or letterboxed when ``config.data.letterbox``. ``max_images``
    reads that many images spread evenly over the split. Boxes of zero width or height are left
    out (they have no shape IoU).
    """
    d = config.data
    size = int(size or d.image_size)
    if size <= 0:
        raise ValueError(f"network size must be positive, got {size}")
    source = sources.open_split(sources.load_builder(d.name, d.data_dir), split)
    num = len(source)
    if max_images is not None and max_images < num:
        if max_images < 1:
            raise ValueError(f"max_images must be at least 1, got {max_images}")
        indices = np.arange(max_images) * num // max_images
    else:
        indices = np.arange(num)
    parts = []
    for n, i in enumerate(indices):
        parts.append(_record_sizes(source[int(i)], size, d.letterbox))
        if (n + 1) % 10000 == 0:
            logging.info("read %d of %d images", n + 1, len(indices))
    sizes = np.concatenate(parts) if parts else np.zeros((0, 2))
    sizes = sizes[np.all(sizes > 0, axis=1)]
    if not len(sizes):
        raise ValueError(
            f"{d.name} split {split!r} has no boxes in the {len(indices)} images read: anchors "
            "are fitted to box sizes, so they need a dataset with boxes"
        )
    return sizes


def model_anchors(model_config: ml_collections.ConfigDict) -> tuple[np.ndarray, int]:
    """(the distinct anchors the model's heads predict [M, 2] sorted by area, number of heads).

    ``config.model.anchors`` when set, else the variant's own (a cfg model: its [yolo] layers).
    yolov4-tiny's heads use 5 of its 6 anchors (anchor 0 is in no mask).
    """
    if model_config.name == "cfg":
        _, layers = parse_cfg(model_config.cfg_path)
    else:
        layers = factory.model_layers(model_config)
    heads = [layer for layer in layers if isinstance(layer, specs.Yolo)]
    used = np.unique(np.array([a for h in heads for a in h.head_anchors], np.float64), axis=0)
    return used[np.argsort(used[:, 0] * used[:, 1], kind="stable")], len(heads)


def round_anchors(anchors: np.ndarray) -> np.ndarray:
    """Integer anchors as darknet prints them (C's round: halves away from zero), at least 1."""
    return np.maximum(np.floor(np.asarray(anchors) + 0.5), 1).astype(int)


def anchors_report(
    config: ml_collections.ConfigDict,
    num: int,
    *,
    size: int | None = None,
    split: str = "train",
    max_images: int | None = None,
    seed: int = 0,
) -> str:
    """What the CLI prints: new anchors (darknet and config forms) and their avg IoU."""
    m, d = config.model, config.data
    size = int(size or d.image_size)
    current, heads = model_anchors(m)
    if m.name != "cfg" and num % heads:
        raise ValueError(
            f"--num {num}: {m.name} has {heads} heads and config.model.anchors are split evenly "
            f"over them, so the number of anchors must be a multiple of {heads}"
        )
    sizes = box_sizes(config, split, max_images, size=size)
    anchors, _ = kmeans_anchors(sizes, num, seed=seed)
    anchors = round_anchors(anchors)
    mode = "letterboxed" if d.letterbox else "stretched"
    source = "config.model.anchors" if m.anchors else f"{m.name}'s default anchors"
    lines = [
        f"{d.name} {split}: {len(sizes)} boxes, {mode} to a {size}x{size} network input",
        "anchors = " + ", ".join(f"{w},{h}" for w, h in anchors),
        f"avg IoU = {100 * mean_best_iou(sizes, anchors):.2f} % with these {num} anchors",
        f"avg IoU = {100 * mean_best_iou(sizes, current):.2f} % with {source} "
        f"({len(current)} used by its {heads} heads)",
    ]
    if m.name == "cfg":
        lines.append(
            f"{m.cfg_path} is a darknet cfg: config.model.anchors does not apply to it; put the "
            "anchors line in its [yolo] sections with num= and mask= to match."
        )
        return "\n".join(lines)
    pairs = ", ".join(f"({w}, {h})" for w, h in anchors)
    lines.append(
        f"for {m.name} ({num // heads} anchors per head, the smallest to the finest head; "
        f"pixels of the {size}x{size} training input):"
    )
    line = f'--config.model.anchors="({pairs})"'
    if size != d.image_size:
        line += f" --config.data.image_size={size}"
    lines.append(line)
    return "\n".join(lines)


def _define_flags():
    # Defined only when run as a program, so importing this module defines no absl flags.
    from absl import flags
    from ml_collections import config_flags

    return dict(
        config=config_flags.DEFINE_config_file(
            "config", None, "Training config file.", lock_config=True
        ),
        num=flags.DEFINE_integer("num", 9, "Number of anchors (a multiple of the heads)."),
        size=flags.DEFINE_integer("size", None, "Network input side; config.data.image_size."),
        split=flags.DEFINE_string("split", "train", "Dataset split."),
        max_images=flags.DEFINE_integer("max_images", None, "Read at most this many images."),
        seed=flags.DEFINE_integer("seed", 0, "k-means seed."),
    )


def main(argv) -> None:
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    f = {k: v.value for k, v in _FLAGS.items()}
    try:
        report = anchors_report(
            f["config"],
            f["num"],
            size=f["size"],
            split=f["split"],
            max_images=f["max_images"],
            seed=f["seed"],
        )
    except (ValueError, KeyError, FileNotFoundError) as e:  # anchors' own checks raise these
        sys.exit(cli.report(e.args[0] if e.args and isinstance(e, KeyError) else e))
    print(report)


if __name__ == "__main__":
    from absl import flags

    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["config"])
    cli.run(main)
