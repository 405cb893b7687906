"""Data augmentations and SAT on the demo recipe: CutMix, MixUp, Self-Adversarial Training."""

BASE = "configs/demo.py"
SEEDS = (0, 1, 2)


def sweep():
    return {
        "baseline": {},
        "cutmix": {"data.cutmix": True},
        "mixup": {"data.mixup": True},
        "sat": {"train.sat": True},
        "no_hsv": {"data.hue": 0.0, "data.saturation": 1.0, "data.exposure": 1.0},
    }
