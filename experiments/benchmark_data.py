"""Host input pipeline throughput: images/s of one worker process at 416 and 608.

    python experiments/benchmark_data.py [--data_dir ~/tensorflow_datasets] [--batches 20] \
        [--mosaic_prob 0,0.5,1.0] [--coco_sized 200 [--jpeg_size 640x480]] \
        [--fast_decode true,false --rounds 3]

Runs the training pipeline in-process (``workers=0``, OpenCV limited to one thread), so the
number is what one grain worker process on one core delivers; multiply by the worker count.
Every setting switches on jitter, flip, HSV, CutMix and MixUp, with Mosaic on the given
fraction of samples. As in darknet, Mosaic switches MixUp off, so MixUp runs only at
mosaic_prob 0, and at 1.0 every sample is a Mosaic (no CutMix). The first batches are
discarded: they warm the page cache and the lazily opened source.

``--coco_sized N`` measures on COCO-sized JPEGs instead of the embedded dataset's smaller
images: N scenes of the embedded renderer at 640x480, written as JPEG and converted once with
``yolov4_jax.data.prepare`` (COCO format) into ``--data_dir`` as ``bench_coco_sized``
(``--jpeg_size WxH`` for other sizes, as ``bench_jpeg_WxH``).

``--fast_decode true,false`` measures each setting with ``data.fast_decode`` on and off, one
after the other, and ``--rounds R`` repeats the whole list R times; with either, the medians
(and the on/off ratio) end the output, so slow drifts of a shared machine hit both alike.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from types import SimpleNamespace

import cv2
import numpy as np
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
        coco_sized=flags.DEFINE_integer(
            "coco_sized", 0, "Measure on N 640x480 JPEG scenes (built once) instead of --name."
        ),
        jpeg_size=flags.DEFINE_string("jpeg_size", "640x480", "WxH of the --coco_sized JPEGs."),
        fast_decode=flags.DEFINE_list(
            "fast_decode", ["true"], "data.fast_decode settings to alternate (true,false)."
        ),
        rounds=flags.DEFINE_integer("rounds", 1, "Times to measure every setting, alternating."),
    )


COCO_SIZED = "bench_coco_sized"


def coco_sized_name(width: int = 640, height: int = 480) -> str:
    """The benchmark dataset's name: ``bench_coco_sized`` at 640x480, else ``bench_jpeg_WxH``."""
    return COCO_SIZED if (width, height) == (640, 480) else f"bench_jpeg_{width}x{height}"


def build_coco_sized(data_dir: str, count: int, width: int = 640, height: int = 480) -> None:
    """`count` WxH JPEG scenes as tfds `coco_sized_name` in `data_dir` (once)."""
    import json
    import tempfile

    from yolov4_jax.data import prepare, synthetic

    name = coco_sized_name(width, height)
    if os.path.isdir(os.path.join(os.path.expanduser(data_dir), name)):
        return
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        images, annotations = [], []
        for i in range(count):
            scene, boxes, labels = synthetic.render_image(rng, 480, 480, 8)
            size = np.array([width, height] * 2)
            scale = size / np.array([scene.shape[1], scene.shape[0]] * 2)
            scene = cv2.resize(scene, (width, height), interpolation=cv2.INTER_LINEAR)
            file_name = f"{i:05d}.jpg"
            cv2.imwrite(
                os.path.join(folder, file_name), scene[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]
            )
            images.append({"id": i + 1, "file_name": file_name, "height": height, "width": width})
            for box, label in zip(boxes * scale, labels, strict=True):
                x0, y0, x1, y1 = (round(float(v), 2) for v in box)
                bbox = [x0, y0, x1 - x0, y1 - y0]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": int(label),
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": k, "name": n} for k, n in enumerate(synthetic.CLASS_NAMES)]
        path = os.path.join(folder, "instances.json")
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
        prepare.prepare(
            format="coco",
            images=folder,
            annotations=path,
            val_fraction=0.1,
            name=name,
            data_dir=os.path.expanduser(data_dir),
        )


def throughput(name: str, size: int, mosaic_prob: float, fast_decode: bool = True) -> float:
    """Images per second of the training pipeline in this process."""
    config = base.get_config()
    d = config.data
    d.name, d.data_dir, d.fast_decode = name, _FLAGS.data_dir.value, fast_decode
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
    name = _FLAGS.name.value
    if _FLAGS.coco_sized.value:
        width, height = (int(v) for v in _FLAGS.jpeg_size.value.lower().split("x"))
        build_coco_sized(_FLAGS.data_dir.value, _FLAGS.coco_sized.value, width, height)
        name = coco_sized_name(width, height)
    cv2.setNumThreads(1)  # as in a worker process: one core each
    config = base.get_config()
    config.data.name, config.data.data_dir = name, _FLAGS.data_dir.value
    info = data.dataset_info(config)
    print(
        f"dataset {info.name} {info.split_sizes}; batch {_FLAGS.batch_size.value}, "
        f"{_FLAGS.batches.value} batches per setting, one process, one thread"
    )
    sizes = [int(s) for s in _FLAGS.sizes.value]
    probs = [float(p) for p in _FLAGS.mosaic.value]
    fast = [v.lower() in ("true", "1", "on") for v in _FLAGS.fast_decode.value]
    rates = collections.defaultdict(list)
    for _ in range(_FLAGS.rounds.value):
        for size in sizes:
            for prob in probs:
                for on in fast:
                    rate = throughput(name, size, prob, on)
                    rates[size, prob, on].append(rate)
                    print(
                        f"canvas {size}  mosaic_prob {prob:.1f}  fast_decode {on!s:5}  "
                        f"{rate:7.1f} images/s per process"
                    )
    if _FLAGS.rounds.value > 1 or len(fast) > 1:
        print(f"medians of {_FLAGS.rounds.value} rounds:")
        for size in sizes:
            for prob in probs:
                median = {on: float(np.median(rates[size, prob, on])) for on in fast}
                line = "  ".join(f"fast_decode {on!s:5} {m:7.1f}" for on, m in median.items())
                if len(median) == 2:
                    line += f"  on/off {median[True] / median[False]:.3f}"
                print(f"canvas {size}  mosaic_prob {prob:.1f}  {line}")


if __name__ == "__main__":
    _FLAGS = _define_flags()
    app.run(main)
