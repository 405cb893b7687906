"""Host input pipeline throughput: images/s of one worker process at 416 and 608.

    python experiments/benchmark_data.py [--data_dir ~/tensorflow_datasets] [--batches 20]

Runs the training pipeline in-process (``workers=0``, OpenCV limited to one thread), so the
number is what one grain worker process on one core delivers; multiply by the worker count.
Each setting uses the full augmentation set (jitter, flip, HSV, CutMix, MixUp) with Mosaic at
the default fraction (0.5) and on every sample (1.0). The first batches are discarded: they
warm the page cache and the lazily opened source.
"""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

import cv2
from absl import app, flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from configs import base  # noqa: E402
from yolov4_jax import data  # noqa: E402


def _define_flags() -> SimpleNamespace:
    # Defined only when run as a program, so importing this module defines no absl flags.
    return SimpleNamespace(
        data_dir=flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "tfds data directory."),
        name=flags.DEFINE_string("name", "yolov4_synthetic", "Dataset (config.data.name)."),
        batches=flags.DEFINE_integer("batches", 20, "Timed batches per setting."),
        batch_size=flags.DEFINE_integer("batch_size", 8, "Images per batch."),
        sizes=flags.DEFINE_list("sizes", ["416", "608"], "Canvas sides."),
        mosaic=flags.DEFINE_list("mosaic_prob", ["0.5", "1.0"], "Mosaic fractions to measure."),
    )


def throughput(size: int, mosaic_prob: float) -> float:
    """Images per second of the training pipeline in this process."""
    config = base.get_config()
    d = config.data
    d.name, d.data_dir = _FLAGS.name.value, _FLAGS.data_dir.value
    d.image_size, d.batch_size, d.workers = size, _FLAGS.batch_size.value, 0
    d.random_shapes = False
    d.mosaic, d.mosaic_prob = True, mosaic_prob
    d.cutmix = d.mixup = True
    iterator = data.create_train_iterator(config, seed=0)
    for _ in range(3):
        next(iterator)
    start, images = time.perf_counter(), 0
    for _ in range(_FLAGS.batches.value):
        images += len(next(iterator)["image"])
    return images / (time.perf_counter() - start)


def main(argv) -> None:
    del argv
    cv2.setNumThreads(1)  # as in a worker process: one core each
    info = data.dataset_info(_config_for_info())
    print(
        f"dataset {info.name} {info.split_sizes}; batch {_FLAGS.batch_size.value}, "
        f"{_FLAGS.batches.value} batches per setting, one process, one thread"
    )
    for size in (int(s) for s in _FLAGS.sizes.value):
        for prob in (float(p) for p in _FLAGS.mosaic.value):
            rate = throughput(size, prob)
            print(f"canvas {size}  mosaic_prob {prob:.1f}  {rate:7.1f} images/s per process")


def _config_for_info():
    config = base.get_config()
    config.data.name, config.data.data_dir = _FLAGS.name.value, _FLAGS.data_dir.value
    return config


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(main)
