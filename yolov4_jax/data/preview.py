"""See what the model sees: training images exactly as they enter the network.

    python -m yolov4_jax.data.preview --config=configs/base.py --out DIR --num N \\
        [--config.data.mosaic_prob=1.0 ...]

Writes ``input_XXXX.png`` (the exact network input, the pixels of a training batch),
``annotated_XXXX.png`` (the same with boxes and class names drawn) and ``boxes.json``, which maps
each input file name to its boxes in pixels (x1, y1, x2, y2), labels and class names.
"""

from __future__ import annotations

import json
import os

import cv2
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from yolov4_jax import cli, data
from yolov4_jax.models import factory, specs


def _define_flags():
    # Defined only when run as a program, so importing `annotate` defines no absl flags.
    config = config_flags.DEFINE_config_file(
        "config", None, "Training config file.", lock_config=True
    )
    out = flags.DEFINE_string("out", None, "Output folder.")
    num = flags.DEFINE_integer("num", 16, "Number of images to write.")
    return config, out, num


def _colour(label: int) -> tuple[int, int, int]:
    hue = (label * 47) % 180
    bgr = cv2.cvtColor(np.array([[[hue, 220, 255]]], np.uint8), cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(int(v) for v in bgr)


def annotate(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    names,
    scores: np.ndarray | None = None,
    *,
    thickness: int = 1,
) -> np.ndarray:
    """RGB image [H, W, 3] with pixel xyxy boxes and class names drawn; returns BGR for cv2.

    With ``scores`` each label reads "name 0.87". ``thickness`` scales lines and text.
    """
    out = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    font_scale = 0.35 * thickness
    for i, ((x0, y0, x1, y1), label) in enumerate(zip(boxes, labels, strict=True)):
        colour = _colour(int(label))
        p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)) - 1, int(round(y1)) - 1)
        cv2.rectangle(out, p0, p1, colour, thickness)
        text = names[label] if label < len(names) else str(label)
        if scores is not None:
            text = f"{text} {float(scores[i]):.2f}"
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(p0[1] - th - 3 * thickness, 0)
        cv2.rectangle(
            out, (p0[0], top), (p0[0] + tw + 2 * thickness, top + th + 3 * thickness), colour, -1
        )
        cv2.putText(
            out,
            text,
            (p0[0] + thickness, top + th + thickness),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return out


def write_preview(config: ml_collections.ConfigDict, out_dir: str, num: int) -> dict:
    """Writes ``num`` training inputs, their annotated copies and boxes.json; returns the JSON."""
    os.makedirs(out_dir, exist_ok=True)
    info = data.dataset_info(config)
    names = info.class_names
    if config.get("task", "detection") == "detection":  # the heads' jitter and resize
        layers = factory.model_layers(config.model, info.num_classes)
        config = data.with_head_augmentation(
            config, [s for s in layers if isinstance(s, specs.Yolo)]
        )
    iterator = data.create_train_iterator(config, seed=config.get("seed", 0))
    index: dict[str, dict] = {}
    try:
        while len(index) < num:
            batch = next(iterator)
            height, width = batch["image"].shape[1:3]
            scale = np.array([width, height, width, height], np.float32)
            for i in range(min(len(batch["image"]), num - len(index))):
                mask = batch["mask"][i]
                boxes = batch["boxes"][i][mask] * scale
                labels = batch["labels"][i][mask]
                name = f"input_{len(index):04d}.png"
                image = batch["image"][i]
                cv2.imwrite(os.path.join(out_dir, name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                cv2.imwrite(
                    os.path.join(out_dir, name.replace("input_", "annotated_")),
                    annotate(image, boxes, labels, names),
                )
                index[name] = {
                    "boxes": [[round(float(v), 2) for v in box] for box in boxes],
                    "labels": labels.tolist(),
                    "names": [names[k] for k in labels],
                }
    finally:
        data.close_iterator(iterator)  # stops the workers, frees their shared memory
    with open(os.path.join(out_dir, "boxes.json"), "w") as f:
        json.dump(index, f, indent=1)
    return index


def main(argv) -> None:
    config, out, num = _FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if out.value is None:
        raise app.UsageError("--out is required")
    index = write_preview(config.value, out.value, num.value)
    print(f"wrote {len(index)} inputs, annotated copies and boxes.json to {out.value}")


if __name__ == "__main__":
    _FLAGS = _define_flags()
    flags.mark_flags_as_required(["config"])
    cli.run(main)
