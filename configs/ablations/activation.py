"""Backbone activation (paper Table 2/3): Mish versus leaky ReLU (and Swish), small YOLOv4."""

BASE = "configs/demo.py"
SEEDS = (0, 1, 2)
SMALL_YOLOV4 = {"model.name": "yolov4", "model.width": 0.25, "model.depth": 0.34}


def sweep():
    return {name: {**SMALL_YOLOV4, "model.activation": name} for name in ("mish", "leaky", "swish")}
