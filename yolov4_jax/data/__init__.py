"""Datasets, the grain input pipeline and augmentations (docs/data.md).

Training and evaluation code needs only the functions exported here.
"""

from __future__ import annotations

import ml_collections

from yolov4_jax.data.classification import (
    create_classification_eval_iterator,
    create_classification_train_iterator,
    num_classification_eval_batches,
)
from yolov4_jax.data.loader import close_iterator
from yolov4_jax.data.pipeline import (
    boxes_to_original,
    create_eval_iterator,
    create_train_iterator,
    num_eval_batches,
    train_batch_size,
    train_canvas_size,
    train_canvas_sizes,
    with_head_augmentation,
)
from yolov4_jax.data.sources import DatasetInfo, dataset_info_from_builder, load_builder


def dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
    """Task, class count and names, split sizes of ``config.data.name`` (prepared if needed)."""
    return dataset_info_from_builder(load_builder(config.data.name, config.data.data_dir))


__all__ = [
    "DatasetInfo",
    "boxes_to_original",
    "close_iterator",
    "create_classification_eval_iterator",
    "create_classification_train_iterator",
    "create_eval_iterator",
    "create_train_iterator",
    "dataset_info",
    "num_classification_eval_batches",
    "num_eval_batches",
    "train_batch_size",
    "train_canvas_size",
    "train_canvas_sizes",
    "with_head_augmentation",
]
