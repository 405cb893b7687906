"""The paper's detector bag of specials (SPP, PAN, SAM; Table 5 style) and MiWRC-style fusion.

YOLOv4-tiny follows its own cfg and has none of these switches, so this sweep uses the full
YOLOv4 at width 1/4 and depth 1/3 (about 3x the demo's step time):
    python -m experiments.ablate --sweep configs/ablations/bos_detector.py --workdir runs/bos
"""

BASE = "configs/demo.py"
SEEDS = (0, 1, 2)
SMALL_YOLOV4 = {"model.name": "yolov4", "model.width": 0.25, "model.depth": 0.34}


def sweep():
    variants = {
        "baseline": {},  # SPP + PAN, no SAM, concatenation
        "no_spp": {"model.spp": False},
        "fpn": {"model.neck": "fpn"},
        "sam": {"model.attention": "sam"},
        "weighted_fusion": {"model.fusion": "weighted"},
        "dropblock": {"model.dropblock": 0.1, "model.dropblock_size": 3},
    }
    return {name: {**SMALL_YOLOV4, **overrides} for name, overrides in variants.items()}
