"""What the train loop needs from a task: detection (YOLOv4) or classification (backbone).

`yolov4_jax.training` is one loop for both (``config.task``); a task supplies the model's data,
loss, evaluation and end-of-run artefact:

* ``batch_keys``: the training batch's arrays (split into micro-batches by the step);
* ``loss(outputs, batch, image_hw)`` -> (scalar loss, metrics with ``total``);
* ``train_iterator(config, **kw)``: the grain iterator of training batches;
* ``evaluate(variables, config, info, mesh)`` -> ``eval/...`` metrics;
* ``finish(variables, config, info, workdir)``: detection writes ``detections.png``.
"""

from __future__ import annotations

import math
import os
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from yolov4_jax import ConfigError, evaluation
from yolov4_jax import data as data_lib
from yolov4_jax.data import preview
from yolov4_jax.detection import losses, sat
from yolov4_jax.evaluation import prediction
from yolov4_jax.models import Network, factory

TASKS = ("detection", "classification")


def create(config: ml_collections.ConfigDict, model: Network) -> DetectionTask | ClassificationTask:
    """The task of ``config.task`` for ``model``."""
    task = config.get("task", "detection")
    if task == "detection":
        return DetectionTask(model, config)
    if task == "classification":
        return ClassificationTask(model, config)
    raise ConfigError(f"config.task must be one of {TASKS}, got {task!r}")


def check_dataset(config: ml_collections.ConfigDict, info: data_lib.DatasetInfo) -> None:
    """A detection run on a classification dataset (or the reverse) is a clear error."""
    task = config.get("task", "detection")
    kind = getattr(info, "task", "detection")
    if kind != task:
        raise ConfigError(
            f"config.data.name={config.data.name!r} is a {kind} dataset, but config.task is "
            f"{task!r}; use a {task} dataset or set config.task={kind!r}"
        )
    is_classifier = config.model.name in factory.CLASSIFIERS
    if is_classifier != (task == "classification"):
        raise ConfigError(
            f"config.model.name={config.model.name!r} does not fit config.task={task!r}: "
            f"classifiers ({', '.join(factory.CLASSIFIERS)}) go with classification"
        )


class DetectionTask:
    """YOLOv4 detection: the [yolo] loss, COCO evaluation, a picture of detections."""

    batch_keys = ("image", "boxes", "labels", "mask")
    progress_keys = {"total": "loss", "box": "box", "obj": "obj", "cls": "cls", "lr": "lr"}

    def __init__(self, model: Network, config: ml_collections.ConfigDict):
        if not model.heads:
            raise ConfigError("the detection task needs a model with [yolo] heads")
        self.model = model
        self.heads = model.heads
        self.loss_options = losses.loss_options(config.loss)

    def loss(self, outputs, batch, image_hw):
        return losses.yolo_loss(outputs, batch, self.heads, self.loss_options, image_hw=image_hw)

    def adversarial_images(self, variables, images, step_size):
        """Self-Adversarial Training's first stage (`yolov4_jax.detection.sat.sat_images`)."""
        return sat.sat_images(
            self.model, variables, images, self.heads, self.loss_options, step_size
        )

    @staticmethod
    def train_iterator(config, **kwargs):
        return data_lib.create_train_iterator(config, **kwargs)

    def evaluate(self, variables, config, info, mesh: Mesh) -> dict[str, float]:
        predict = prediction.make_predict_fn(self.model, _nms_options(config, self.heads))
        if mesh.devices.size > 1:
            predict = evaluation.shard_predict_fn(predict, mesh)
        metrics = evaluation.evaluate(
            predict,
            prediction.prepare_variables(self.model, variables),  # Winograd transforms, once
            config,
            split=config.train.eval_split,
            class_names=info.class_names,
            max_batches=config.train.eval_max_batches or None,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        return {f"eval/{k}": float(v) for k, v in metrics.items() if _is_number(v)}

    def finish(self, variables, config, info, workdir: str) -> None:
        if config.train.detections_image:
            write_detections_image(self.model, variables, config, info, workdir)


class ClassificationTask:
    """Backbone pretraining: softmax cross-entropy on mixed labels, top-1/top-5 accuracy."""

    batch_keys = ("image", "label", "target")
    progress_keys = {"total": "loss", "top1": "acc", "lr": "lr"}

    def __init__(self, model: Network, config: ml_collections.ConfigDict):
        if model.heads:
            raise ConfigError("the classification task needs a classifier (no [yolo] heads)")
        if config.train.sat:
            raise ConfigError(
                "config.train.sat: Self-Adversarial Training is part of the detector's recipe "
                "(its adversarial loss hides objects); set it False for classification"
            )
        self.model = model
        smoothing = config.loss.label_smoothing
        self.label_smoothing = float(smoothing) if smoothing is not None else 0.0

    def loss(self, outputs, batch, image_hw):  # noqa: ARG002
        logits = outputs.reshape(outputs.shape[0], -1)
        return losses.classification_loss(
            logits, batch["target"], batch["label"], self.label_smoothing
        )

    @staticmethod
    def train_iterator(config, **kwargs):
        return data_lib.create_classification_train_iterator(config, **kwargs)

    def evaluate(self, variables, config, info, mesh: Mesh) -> dict[str, float]:
        return evaluate_classifier(
            self.model, variables, config, info.num_classes, mesh, config.train.eval_split
        )

    def finish(self, variables, config, info, workdir) -> None:  # noqa: ARG002
        return None


def evaluate_classifier(
    model: Network,
    variables: Any,
    config: ml_collections.ConfigDict,
    num_classes: int,
    mesh: Mesh,
    split: str = "validation",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy (and the mean cross-entropy) over ``split``.

    Each process feeds its rows of every global batch; padding rows (``valid`` False) are
    not counted. Every process returns the same numbers.
    """
    k = min(5, num_classes)
    rows = NamedSharding(mesh, P("data"))

    @jax.jit
    def counts(variables, images, labels, valid):
        logits = model.apply(variables, images.astype(jnp.float32) / 255.0, train=False)
        logits = logits.reshape(logits.shape[0], -1).astype(jnp.float32)
        _, top = jax.lax.top_k(logits, k)
        hit = top == labels[:, None]
        weight = valid.astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
        return jnp.stack(
            [
                jnp.sum(hit[:, 0] * weight),
                jnp.sum(jnp.any(hit, axis=-1) * weight),
                jnp.sum(nll * weight),
                jnp.sum(weight),
            ]
        )

    iterator = data_lib.create_classification_eval_iterator(
        config, split, process_index=jax.process_index(), process_count=jax.process_count()
    )
    max_batches = config.train.eval_max_batches or None
    totals = np.zeros(4)
    try:
        for n, batch in enumerate(iterator):
            if max_batches is not None and n >= max_batches:
                break
            arrays = [
                jax.make_array_from_process_local_data(rows, np.asarray(batch[key]))
                for key in ("image", "label", "valid")
            ]
            totals += np.asarray(jax.device_get(counts(variables, *arrays)))
    finally:
        data_lib.close_iterator(iterator)
    seen = max(totals[3], 1.0)
    return {
        "eval/top1": totals[0] / seen,
        f"eval/top{k}": totals[1] / seen,
        "eval/loss": totals[2] / seen,
        "eval/images": totals[3],
    }


def _nms_options(config: ml_collections.ConfigDict, heads):
    tc = config.train
    return prediction.nms_options_for(
        heads,
        score_threshold=tc.eval_score_threshold,
        iou_threshold=tc.eval_iou_threshold,
        max_detections=tc.eval_max_detections,
    )


def _is_number(v) -> bool:
    return isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v))


def write_detections_image(model, variables, config, info, workdir: str, num: int = 8) -> str:
    """WORKDIR/detections.png: the first validation images with the model's detections."""

    options = prediction.nms_options_for(model.heads, score_threshold=0.25)
    predict = prediction.make_predict_fn(model, options)
    eval_config = ml_collections.ConfigDict(config.to_dict())
    eval_config.data.eval_batch_size = num
    iterator = data_lib.create_eval_iterator(eval_config, config.train.eval_split)
    try:
        batch = next(iterator)
    finally:
        data_lib.close_iterator(iterator)
    dets = jax.device_get(predict(variables, jnp.asarray(batch["image"])))
    tiles = []
    side = batch["image"].shape[1]
    for i in range(num):
        if not batch["valid"][i]:
            continue
        keep = dets.valid[i]
        boxes = dets.boxes[i][keep] * side
        tiles.append(
            preview.annotate(batch["image"][i], boxes, dets.classes[i][keep], info.class_names)
        )
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    blank = np.zeros_like(tiles[0])
    tiles += [blank] * (rows * cols - len(tiles))
    grid = np.concatenate(
        [np.concatenate(tiles[r * cols : (r + 1) * cols], axis=1) for r in range(rows)], axis=0
    )
    path = os.path.join(workdir, "detections.png")
    cv2.imwrite(path, grid)
    return path
