"""COCO box metrics of a detector on a dataset split.

    python -m yolov4_jax.evaluate --config=configs/base.py --cfg=yolov4.cfg \
        --weights=yolov4.weights [--split=validation] [--thresh=0.001] [--nms_thresh=0.6] \
        [--max_detections=100] [--max_batches=0] [--out=metrics.json] \
        [--config.data.name=coco/2017 --config.data.data_dir=DIR \
         --config.data.eval_image_size=608 --config.data.eval_batch_size=8]

    python -m yolov4_jax.evaluate --workdir=WORKDIR [--checkpoint=best|latest] [--config=...]
        [--dtype=bfloat16 --conv_algorithm=mkl]

The model is a training run's checkpoint (``--workdir``; its config.json unless ``--config`` is
given), a darknet ``--cfg`` with ``--weights``, else ``config.model`` (with the darknet
weights of ``--weights`` or ``config.model.weights``); see `loading.load_model`. The
thresholds default to darknet's COCO run (``detector valid``: thresh .001, nms .6, the cfg's
nms_kind). Images are resized to ``config.data.eval_image_size or config.data.image_size``,
stretched unless ``config.data.letterbox`` (darknet's ``letter_box=1``). Prints AP, AP50,
AP75, AP by object size and per class (`yolov4_jax.evaluation`), and writes them as JSON to
``--out``.
``--dtype`` and ``--conv_algorithm`` replace the model's compute dtype and convolution
algorithm (e.g. bfloat16 through oneMKL on the CPU, to measure what it costs in AP).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from types import SimpleNamespace

import jax
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from yolov4_jax import ConfigError, cli, data, evaluation
from yolov4_jax.evaluation import loading, prediction
from yolov4_jax.models import Network
from yolov4_jax.ops.conv import CONV_ALGORITHMS


def _check_canvas(model: Network, config: ml_collections.ConfigDict) -> None:
    """Warns when the evaluation canvas or resize differ from the cfg's [net] (darknet's run)."""
    net = dict(model.net)
    if not net:  # not from a cfg
        return
    canvas = config.data.eval_image_size or config.data.image_size
    size = (int(net.get("height", canvas)), int(net.get("width", canvas)))
    if size != (canvas, canvas):
        logging.warning("evaluating at %dx%d; the cfg's [net] is %dx%d", canvas, canvas, *size)
    if bool(int(net.get("letter_box", 0))) != bool(config.data.letterbox):
        logging.warning(
            "config.data.letterbox=%s but the cfg has letter_box=%s",
            config.data.letterbox,
            net.get("letter_box", 0),
        )


def run(
    config: ml_collections.ConfigDict,
    *,
    cfg: str | None = None,
    weights: str | None = None,
    split: str = "validation",
    thresh: float = 0.001,
    nms_thresh: float = 0.6,
    max_detections: int = 100,
    max_batches: int | None = None,
    verbose: bool = False,
    progress: bool = False,
    workdir: str | None = None,
    checkpoint: str = "best",
    dtype: str | None = None,
    conv_algorithm: str | None = None,
) -> dict[str, float]:
    """Loads the model (`loading.load_model`: darknet files, ``config.model`` with darknet
    weights, or the ``checkpoint`` of a training ``workdir``) and
    returns `evaluation.evaluate`'s metrics on ``split``; ``dtype`` and ``conv_algorithm``,
    where given, replace the model's (`model.dtype`, `model.conv_algorithm`)."""
    info = data.dataset_info(config)
    loaded = loading.load_model(
        cfg=cfg,
        weights=weights,
        workdir=workdir,
        checkpoint=checkpoint,
        config=None if workdir else config,
        num_classes=info.num_classes,
        allow_random=True,
        seed=config.get("seed", 0),
    )
    model, variables = loaded.model, loaded.variables
    model = prediction.with_compute(model, dtype, conv_algorithm)
    if not model.heads:
        raise loading.ModelSourceError("the model has no [yolo] layers, so it is not a detector")
    if model.heads[0].classes != info.num_classes:
        raise loading.ModelSourceError(
            f"the model predicts {model.heads[0].classes} classes, {info.name} has "
            f"{info.num_classes}"
        )
    _check_canvas(model, config)
    options = prediction.nms_options_for(
        model.heads,
        score_threshold=thresh,
        iou_threshold=nms_thresh,
        max_detections=max_detections,
    )
    predict = prediction.make_predict_fn(model, options)
    if jax.device_count() > 1:
        batch = config.data.eval_batch_size or config.data.batch_size
        if batch % jax.device_count():
            raise ConfigError(
                f"eval batch {batch} is not divisible by {jax.device_count()} devices"
            )
        predict = evaluation.shard_predict_fn(
            predict, jax.make_mesh((jax.device_count(),), ("data",))
        )
    return evaluation.evaluate(
        predict,
        prediction.prepare_variables(model, variables),  # Winograd transforms, kernel dtype
        config,
        split=split,
        class_names=info.class_names,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        max_batches=max_batches,
        progress=progress,
        verbose=verbose,
    )


def format_metrics(metrics: Mapping[str, float]) -> str:
    """The summary metrics, then AP@[.5:.95] per class, one per line."""
    lines = [f"{int(metrics['num_images'])} images, {int(metrics['num_detections'])} detections"]
    lines += [f"  {name:<10} {metrics[name]:.4f}" for name in evaluation.STAT_NAMES]
    per_class = [(k[3:], v) for k, v in metrics.items() if k.startswith("AP/")]
    if per_class:
        width = max(len(name) for name, _ in per_class)
        lines.append("AP@[.5:.95] per class:")
        lines += [f"  {name:<{width}} {value:.4f}" for name, value in per_class]
    return "\n".join(lines)


def _define_flags() -> SimpleNamespace:
    # Defined only when run as a program, so importing this module defines no absl flags.
    return SimpleNamespace(
        config=config_flags.DEFINE_config_file("config", None, "Config file (data, model)."),
        cfg=flags.DEFINE_string("cfg", None, "Darknet .cfg (default: config.model)."),
        weights=flags.DEFINE_string(
            "weights", None, "Darknet .weights (default: config.model.weights)."
        ),
        split=flags.DEFINE_string("split", "validation", "Dataset split to evaluate."),
        thresh=flags.DEFINE_float(
            "thresh", 0.001, "Score threshold (darknet detector valid: .001)."
        ),
        nms_thresh=flags.DEFINE_float("nms_thresh", 0.6, "NMS IoU threshold (detector valid: .6)."),
        max_detections=flags.DEFINE_integer(
            "max_detections", 100, "Detections per image (COCO: 100)."
        ),
        max_batches=flags.DEFINE_integer(
            "max_batches", 0, "Evaluate only this many batches (0: all)."
        ),
        out=flags.DEFINE_string("out", None, "Write the metrics to this JSON file."),
        workdir=flags.DEFINE_string(
            "workdir",
            None,
            "A training workdir: evaluate its checkpoint (config: its config.json).",
        ),
        checkpoint=flags.DEFINE_enum(
            "checkpoint", "best", ["best", "latest"], "Which --workdir one."
        ),
        verbose=flags.DEFINE_bool("verbose", False, "Print pycocotools' own summary too."),
        dtype=flags.DEFINE_enum(
            "dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the model's)."
        ),
        conv_algorithm=flags.DEFINE_enum(
            "conv_algorithm",
            None,
            list(CONV_ALGORITHMS),
            "model.conv_algorithm (default: the model's); mkl: oneMKL on the CPU.",
        ),
    )


def write_json(metrics: Mapping[str, float], path: str) -> None:
    """Metrics as a JSON object; NaN (undefined) is written as null."""
    clean = {k: (None if math.isnan(v) else v) for k, v in metrics.items()}
    with open(path, "w") as f:
        json.dump(clean, f, indent=1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _FLAGS.config.value
    if config is None:
        if not _FLAGS.workdir.value:
            raise app.UsageError("pass --config, or --workdir of a training run")
        path = os.path.join(_FLAGS.workdir.value, "config.json")
        if not os.path.exists(path):
            raise app.UsageError(f"{path} is missing: is --workdir a training workdir?")
        with open(path) as f:
            config = ml_collections.ConfigDict(json.load(f))
    if config.get("train") is not None and config.train.get("distributed", False):
        jax.distributed.initialize()
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    logging.getLogger().setLevel(logging.INFO)
    metrics = run(
        config,
        cfg=_FLAGS.cfg.value,
        weights=_FLAGS.weights.value,
        split=_FLAGS.split.value,
        thresh=_FLAGS.thresh.value,
        nms_thresh=_FLAGS.nms_thresh.value,
        max_detections=_FLAGS.max_detections.value,
        max_batches=_FLAGS.max_batches.value or None,
        verbose=_FLAGS.verbose.value,
        progress=True,
        workdir=_FLAGS.workdir.value,
        checkpoint=_FLAGS.checkpoint.value,
        dtype=_FLAGS.dtype.value,
        conv_algorithm=_FLAGS.conv_algorithm.value,
    )
    if jax.process_index() == 0:
        print(f"{config.data.name} {_FLAGS.split.value}: " + format_metrics(metrics))
        if _FLAGS.out.value:
            write_json(metrics, _FLAGS.out.value)


if __name__ == "__main__":
    _FLAGS = _define_flags()
    cli.run(main)
