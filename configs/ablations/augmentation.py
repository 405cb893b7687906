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


# The paper's direction of each variant against this sweep's baseline. Table 4 has Mosaic for
# the detector; CutMix and MixUp were measured only on the classifier (Table 2, CSPResNeXt-50,
# top-1), SAT and HSV in no table ("?": named, no direction measured). MixUp's control is
# no_mosaic (darknet's Mosaic turns it off).
PAPER = {
    "no_mosaic": ("-", "Table 4 rows 1, 3: M 38.0 -> 39.1 AP"),
    "cutmix": ("+", "classifier only, Table 2: 77.9 -> 78.0 top-1"),
    "mixup": ("-", "classifier only, Table 2: 77.9 -> 77.2 top-1", "no_mosaic"),
    "sat": ("?", "section 3.3: SAT in the detector's BoF (no row)"),
    "no_hsv": ("?", "section 2.1: photometric distortions, a common BoF (no row)"),
}
