"""COCO box evaluation (pycocotools) of a detector over an evaluation split.

`CocoEvaluator` is host-side NumPy: it accumulates ground truth and detections in original-image
pixels and builds both COCO datasets in memory, so every dataset (the embedded synthetic one
included) is scored by the same code. `evaluate` runs a ``predict(variables, images)`` function
(`prediction.make_predict_fn`) over `yolov4_jax.data.create_eval_iterator` and scores it.

The COCO protocol is followed as pycocotools applies it to instances_val2017.json: crowd
annotations (``iscrowd``) are ignore regions (a detection matching one counts neither as a
true nor as a false positive), and a ground truth's area for AP_small/medium/large is the
annotation's own ``area`` (COCO's segmentation area) where the dataset stores one (datasets
prepared from COCO json by `yolov4_jax.data.prepare` do), else the box area. The one
difference left: an image keeps at most ``config.data.max_boxes`` annotations (90, COCO's
largest val2017 image has 93 with crowds), in the record's order.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from yolov4_jax import data
from yolov4_jax.detection.nms import Detections

PredictFn = Callable[[Any, Any], Detections]

# COCOeval.summarize's stats, in its order.
STAT_NAMES = (
    "AP",  # AP at IoU .50:.05:.95, all areas, 100 detections
    "AP50",
    "AP75",
    "AP_small",  # area < 32^2 pixels
    "AP_medium",  # 32^2 <= area < 96^2
    "AP_large",  # area >= 96^2
    "AR1",  # recall at IoU .50:.95 with 1, 10, 100 detections per image
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


class CocoEvaluator:
    """Accumulates ground truth and detections, then scores them with pycocotools.

    Labels and classes are 0-based indices into ``class_names``; COCO category ids are
    ``label + 1``. Images are identified by ``image_id`` and must be added once each.

    `compute` returns:
      ``AP``, ``AP50``, ``AP75``, ``AP_small``, ``AP_medium``, ``AP_large`` and ``AR1`` ...
        ``AR_large``: COCOeval's 12 summary stats as fractions in [0, 1]; NaN where undefined
        (no ground truth at all, or none in that area range; pycocotools writes -1).
      ``AP/<class name>``: AP@[.5:.95] of each class (area all, 100 detections). Classes without
        ground truth are omitted: their AP is undefined, and COCO's mean leaves them out too.
      ``num_images``, ``num_detections``: counts (int).
    With ground truth but no detections every defined AP is 0.
    """

    def __init__(self, class_names: Sequence[str], *, verbose: bool = False):
        self.class_names = tuple(class_names)
        self.verbose = verbose
        self.reset()

    def reset(self) -> None:
        self._sizes: dict[int, tuple[int, int]] = {}  # image id -> (height, width)
        self._gt: list[tuple] = []  # (image id, boxes [G, 4], labels [G], crowd [G], area [G])
        self._dt: list[tuple] = []  # (image id, boxes [D, 4], classes [D], scores [D], None)

    @property
    def num_images(self) -> int:
        return len(self._sizes)

    @property
    def num_detections(self) -> int:
        return sum(len(classes) for _, _, classes, _, _ in self._dt)

    def add(
        self,
        *,
        image_ids: np.ndarray,
        orig_sizes: np.ndarray,
        gt_boxes: np.ndarray,
        gt_labels: np.ndarray,
        gt_mask: np.ndarray,
        det_boxes: np.ndarray,
        det_scores: np.ndarray,
        det_classes: np.ndarray,
        det_valid: np.ndarray,
        valid: np.ndarray | None = None,
        gt_crowd: np.ndarray | None = None,
        gt_area: np.ndarray | None = None,
    ) -> None:
        """Adds a batch of B images; rows with ``valid`` False (padding) are skipped.

        Args:
          image_ids: [B] int.
          orig_sizes: [B, 2] (height, width) of the original images.
          gt_boxes: [B, M, 4] xyxy, original pixels; gt_labels [B, M]; gt_mask [B, M] bool.
          det_boxes: [B, K, 4] xyxy, original pixels; det_scores [B, K]; det_classes [B, K];
            det_valid [B, K] bool.
          valid: [B] bool; None: every row.
          gt_crowd: [B, M] bool, crowd annotations (ignore regions); None: none.
          gt_area: [B, M] the annotations' areas in original pixels, < 0 for the box area;
            None: box areas.
        """
        image_ids = np.asarray(image_ids).reshape(-1)
        rows = np.ones(len(image_ids), bool) if valid is None else np.asarray(valid, bool)
        num_classes = len(self.class_names)
        for i in np.flatnonzero(rows):
            image_id = int(image_ids[i])
            if image_id in self._sizes:
                raise ValueError(f"image id {image_id} was added twice")
            gt = np.asarray(gt_mask[i], bool)
            labels = np.asarray(gt_labels[i])[gt].astype(np.int64)
            dt = np.asarray(det_valid[i], bool)
            classes = np.asarray(det_classes[i])[dt].astype(np.int64)
            for name, values in (("ground-truth label", labels), ("detection class", classes)):
                if np.any((values < 0) | (values >= num_classes)):
                    raise ValueError(
                        f"image {image_id}: {name} {values.min()}..{values.max()} outside "
                        f"the {num_classes} classes"
                    )
            height, width = (int(v) for v in orig_sizes[i])
            self._sizes[image_id] = (height, width)
            crowd = np.zeros(len(labels), bool) if gt_crowd is None else np.asarray(gt_crowd[i])[gt]
            area = np.full(len(labels), -1.0) if gt_area is None else np.asarray(gt_area[i])[gt]
            boxes = np.asarray(gt_boxes[i], np.float64)[gt]
            self._gt.append((image_id, boxes, labels, crowd.astype(bool), area.astype(np.float64)))
            self._dt.append(
                (
                    image_id,
                    np.asarray(det_boxes[i], np.float64)[dt],
                    classes,
                    np.asarray(det_scores[i], np.float64)[dt],
                    None,
                )
            )

    def _coco(self, entries: list[tuple]):
        """A pycocotools COCO of all images and ``entries`` (ground truth or detections)."""
        from pycocotools.coco import COCO

        annotations = []
        for image_id, boxes, labels, extra_a, extra_b in entries:
            # Ground truth: (crowd, area); detections: (scores, None).
            is_gt = extra_b is not None
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
            for j, (box, label) in enumerate(zip(xywh.tolist(), labels.tolist(), strict=True)):
                ann = {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "unmatched"
                    "image_id": image_id,
                    "category_id": label + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
                if is_gt:
                    ann["iscrowd"] = int(extra_a[j])
                    if extra_b[j] >= 0:
                        ann["area"] = float(extra_b[j])
                else:
                    ann["score"] = float(extra_a[j])
                annotations.append(ann)
        coco = COCO()
        coco.dataset = {
            "images": [{"id": k, "height": h, "width": w} for k, (h, w) in self._sizes.items()],
            "categories": [{"id": c + 1, "name": n} for c, n in enumerate(self.class_names)],
            "annotations": annotations,
        }
        coco.createIndex()
        return coco

    def compute(self) -> dict[str, float]:
        """Runs COCOeval (bbox) on everything added; see the class docstring for the keys."""
        from pycocotools.cocoeval import COCOeval

        metrics = {name: math.nan for name in STAT_NAMES}
        metrics["num_images"] = self.num_images
        metrics["num_detections"] = self.num_detections
        if not self._sizes:
            return metrics
        quiet = (
            contextlib.nullcontext() if self.verbose else contextlib.redirect_stdout(io.StringIO())
        )
        with quiet:
            # Both datasets are built directly rather than with COCO.loadRes, which fails on
            # an empty detection list; COCOeval itself scores "no detections" as AP 0.
            ground_truth = self._coco(self._gt)
            detections = self._coco(self._dt)
            coco_eval = COCOeval(ground_truth, detections, iouType="bbox")
            coco_eval.params.imgIds = sorted(self._sizes)
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        for name, value in zip(STAT_NAMES, coco_eval.stats, strict=True):
            metrics[name] = float(value) if value >= 0 else math.nan
        precision = coco_eval.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M]
        for k, category_id in enumerate(coco_eval.params.catIds):
            p = precision[:, :, k, 0, -1]  # area "all", maxDets 100
            p = p[p > -1]  # -1: the class has no ground truth
            if p.size:
                metrics[f"AP/{self.class_names[category_id - 1]}"] = float(p.mean())
        return metrics


def _gather_rows(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's rows, concatenated in process order (on every process)."""
    from jax.experimental import multihost_utils

    rows = dict(rows)
    # process_allgather goes through jax arrays, which are 32-bit without jax_enable_x64:
    # carry the int64 image ids as pairs of int32 words.
    ids = np.ascontiguousarray(rows.pop("image_ids"), np.int64)
    rows["image_id_words"] = ids.view(np.int32).reshape(len(ids), 2)
    gathered = multihost_utils.process_allgather(rows, tiled=True)
    gathered = {k: np.asarray(v) for k, v in gathered.items()}
    words = np.ascontiguousarray(gathered.pop("image_id_words"), np.int32)
    gathered["image_ids"] = words.view(np.int64).reshape(-1)
    return gathered


def evaluate(
    predict_fn: PredictFn,
    variables: Any,
    config: ml_collections.ConfigDict,
    *,
    split: str = "validation",
    class_names: Sequence[str] | None = None,
    letterbox: bool | None = None,
    process_index: int = 0,
    process_count: int = 1,
    max_batches: int | None = None,
    progress: bool = False,
    verbose: bool = False,
) -> dict[str, float]:
    """COCO metrics of ``predict_fn`` on ``split`` (keys as `CocoEvaluator.compute`).

    Args:
      predict_fn: ``predict(variables, images) -> Detections``: images uint8 [B, S, S, 3], boxes
        normalised to that canvas (`prediction.make_predict_fn`; `shard_predict_fn` for a mesh).
        Detections below its score threshold and beyond its ``max_detections`` are not scored;
        darknet's COCO run uses threshold .001 (``detector valid``), its mAP .005.
      variables: passed through to ``predict_fn``.
      config: ``config.data`` names the dataset and the eval canvas
        (``eval_image_size or image_size``) and batch.
      split: the dataset split.
      class_names: default: the dataset's.
      letterbox: resize evaluation images with letterboxing; default ``config.data.letterbox``.
      process_index, process_count: this process's rows of each batch. With several processes
        the rows of all of them are gathered (``process_allgather``) and every process computes
        and returns the same metrics.
      max_batches: score only the first batches (per process); None: the whole split.
      progress: show a tqdm progress bar (on process 0).
      verbose: let pycocotools print its summary.
    """
    if letterbox is not None and letterbox != config.data.letterbox:
        config = ml_collections.ConfigDict(config.to_dict())
        config.data.letterbox = letterbox
    letterbox = bool(config.data.letterbox)
    canvas = config.data.eval_image_size or config.data.image_size
    info = data.dataset_info(config)
    if class_names is None:
        class_names = info.class_names
    num_batches = data.num_eval_batches(config, info.split_sizes[split])
    if max_batches is not None:
        num_batches = min(num_batches, max_batches)

    rows: dict[str, list[np.ndarray]] = {}

    def collect(batch: Mapping[str, np.ndarray], dets: Detections) -> None:
        dets = jax.device_get(dets)
        size = batch["orig_size"]
        found = {
            "image_ids": batch["image_id"],
            "orig_sizes": size,
            "gt_boxes": batch["gt_boxes"],
            "gt_labels": batch["gt_labels"],
            "gt_mask": batch["gt_mask"],
            "gt_crowd": batch["gt_crowd"],
            "gt_area": batch["gt_area"],
            "det_boxes": data.boxes_to_original(dets.boxes, size, (canvas, canvas), letterbox),
            "det_scores": dets.scores,
            "det_classes": dets.classes,
            "det_valid": dets.valid,
            "valid": batch["valid"],
        }
        for key, value in found.items():
            rows.setdefault(key, []).append(np.asarray(value))

    bar = tqdm(total=num_batches, disable=not progress or process_index != 0, unit="batch")
    iterator = data.create_eval_iterator(
        config, split, process_index=process_index, process_count=process_count
    )
    pending = None
    try:
        for _, batch in zip(range(num_batches), iterator, strict=False):
            # Dispatch this batch before fetching the last one, so the device works meanwhile.
            dets = predict_fn(variables, batch["image"])
            if pending is not None:
                collect(*pending)
                bar.update(1)
            pending = (batch, dets)
    finally:
        data.close_iterator(iterator)
    if pending is not None:
        collect(*pending)
        bar.update(1)
    bar.close()

    evaluator = CocoEvaluator(class_names, verbose=verbose)
    if rows:
        local = {k: np.concatenate(v) for k, v in rows.items()}
        if process_count > 1:
            local = _gather_rows(local)
        evaluator.add(**local)
    metrics = evaluator.compute()
    logging.info(
        "evaluated %d images of %s: AP %.4f, AP50 %.4f",
        evaluator.num_images,
        split,
        metrics["AP"],
        metrics["AP50"],
    )
    return metrics


def shard_predict_fn(predict_fn: PredictFn, mesh: Mesh, axis: str = "data") -> PredictFn:
    """Runs ``predict_fn`` data-parallel on ``mesh``; each process passes and gets its own rows.

    The returned ``predict(variables, images)`` takes this process's images (the rows
    `create_eval_iterator` gives it; their count divisible by its devices), forms the global
    batch sharded over ``axis`` and returns NumPy detections of the same rows. ``variables`` are
    replicated on the mesh (a no-op when they already are, as in the train state).
    """
    from jax.experimental import multihost_utils

    rows = NamedSharding(mesh, P(axis))
    replicated = NamedSharding(mesh, P())

    def predict(variables: Any, images: Any) -> Detections:
        variables = jax.device_put(variables, replicated)
        images = jax.make_array_from_process_local_data(rows, np.asarray(images))
        dets = predict_fn(variables, images)
        dets = jax.device_put(dets, rows)  # the compiler may have chosen another layout
        local = multihost_utils.global_array_to_host_local_array(dets, mesh, P(axis))
        return jax.tree.map(np.asarray, local)

    return predict
