"""Data augmentations and SAT on the sweep recipe (configs/sweep_detector.py): CutMix, MixUp,
Self-Adversarial Training, HSV."""

BASE = "configs/sweep_detector.py"
SEEDS = (0, 1, 2)


def sweep():
    return {
        "baseline": {},
        "cutmix": {"data.cutmix": True},
        # darknet's mosaic=1 switches MixUp off, so MixUp is measured against no_mosaic.
        "no_mosaic": {"data.mosaic": False},
        "mixup": {"data.mixup": True, "data.mosaic": False},
        "sat": {"train.sat": True},
        "no_hsv": {"data.hue": 0.0, "data.saturation": 1.0, "data.exposure": 1.0},
    }
