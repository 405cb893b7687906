"""The paper's backbone bag of freebies (Tables 2 and 3), at demo scale.

From configs/classifier_demo.py (CSPDarknet53 at width 1/4 on the embedded classification
dataset). ``none`` switches every item off (leaky activation); each next row adds one item, and
the last rows are the paper's combinations (Table 3: CutMix + Mosaic + label smoothing, then
Mish):
    python -m experiments.ablate --sweep configs/ablations/bof_classifier.py --workdir runs/bofc
"""

BASE = "configs/classifier_demo.py"
SEEDS = (0, 1, 2)
METRICS = ("top1", "top5")

_NONE = {
    "data.cutmix": False,
    "data.mosaic": False,
    "data.mixup": False,
    "loss.label_smoothing": 0.0,
    "model.dropblock": 0.0,
    "model.activation": "leaky",
}


def sweep():
    return {
        "none": _NONE,
        "cutmix": {**_NONE, "data.cutmix": True},
        "mosaic": {**_NONE, "data.mosaic": True},
        "mixup": {**_NONE, "data.mixup": True},
        "label_smoothing": {**_NONE, "loss.label_smoothing": 0.1},
        "dropblock": {**_NONE, "model.dropblock": 0.1},
        "mish": {**_NONE, "model.activation": "mish"},
        "cutmix_mosaic_ls": {
            **_NONE,
            "data.cutmix": True,
            "data.mosaic": True,
            "loss.label_smoothing": 0.1,
        },
        "cutmix_mosaic_ls_mish": {
            **_NONE,
            "data.cutmix": True,
            "data.mosaic": True,
            "loss.label_smoothing": 0.1,
            "model.activation": "mish",
        },
        "all": {},  # classifier_demo.py itself: the above plus DropBlock
    }
