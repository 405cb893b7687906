"""The paper's detector bag of freebies (Table 4), one item switched at a time, at sweep scale.

Each variant changes one item of configs/sweep_detector.py's recipe (the demo's, YOLOv4-tiny's,
at 192 px for 2400 updates: grid sensitivity, Mosaic, CIoU, cosine annealing on; yolov4-tiny.cfg
sets no iou_thresh, so one anchor per ground truth is the baseline and ``iou_thresh`` adds the
paper's .213). The paper's GA row needs a genetic search first (`experiments.evolve`, hours at
this scale); its best_config.py is then a config to compare with.
    python -m experiments.ablate --sweep configs/ablations/bof_detector.py --workdir runs/bof
"""

BASE = "configs/sweep_detector.py"
SEEDS = (0, 1, 2)


# k-means at 256 px (13,13, 25,26, 45,45, 74,70, 103,114, 161,151) scaled to the 192 px canvas.
_EMBEDDED_ANCHORS = ((10, 10), (19, 20), (34, 34), (56, 53), (77, 86), (121, 113))


def _late_steps(config):
    """steps at .8 and .9 of optim.max_batches"""
    n = config.optim.max_batches
    return (int(0.8 * n), int(0.9 * n))


def sweep():
    return {
        "baseline": {},
        "no_grid_sensitivity": {"model.head_options": {"scale_x_y": 1.0}},  # S
        "no_mosaic": {"data.mosaic": False},  # M
        "iou_thresh": {"loss.iou_thresh": 0.213},  # IT: every anchor with shape IoU > .213
        "label_smoothing": {"loss.label_smoothing": 0.1},
        "bn_subdivisions": {"optim.subdivisions": 2},  # BN per mini-batch of 8: CmBN's control
        "cmbn": {"train.bn": "cmbn", "optim.subdivisions": 2},  # CBN row: CmBN over 2 minis
        "steps_schedule": {"optim.schedule": "steps", "optim.steps": _late_steps},  # CA off
        # Random training shapes (darknet random=1, sides 1/1.4..1.4 of 192 in steps of 32) are
        # the control of DM: dynamic mini-batch scales the batch inversely with the canvas area.
        "random_shapes": {"data.random_shapes": True},
        "dynamic_minibatch": {"data.random_shapes": True, "data.dynamic_minibatch": True},
        # OA: k-means anchors of the embedded dataset (2.0.0) at 256 (`python -m yolov4_jax.anchors
        # --config=configs/demo.py --num 6 --size 256`: avg IoU 70% against 55% for COCO's), in
        # pixels of the 192 px canvas.
        "optimised_anchors": {"model.anchors": _EMBEDDED_ANCHORS},
        "mse": {"loss.box_loss": "mse"},
        "giou": {"loss.box_loss": "giou"},
        "diou": {"loss.box_loss": "diou"},
        # darknet's hand-written box deltas (the default) against the exact chain rule
        "autodiff_box_gradient": {"loss.box_gradient": "autodiff"},
        "autodiff_giou": {"loss.box_loss": "giou", "loss.box_gradient": "autodiff"},
        "autodiff_mse": {"loss.box_loss": "mse", "loss.box_gradient": "autodiff"},
    }


# The paper's direction of each variant against this sweep's baseline, from Table 4
# (CSPResNeXt50-PANet-SPP, 512x512, MS COCO; rows numbered from the top; AP). Table 4's single
# items are switched on over a bare MSE baseline, while this sweep switches one item off (or
# on) in a full recipe: "no_X" variants carry the opposite of X's sign. A third item names the
# variant that is the paper's control where the baseline is not (CBN against BN per
# mini-batch, DM against random shapes without it).
PAPER = {
    "no_grid_sensitivity": ("+", "Table 4 rows 1-2: S alone 38.0 -> 37.7"),
    "no_mosaic": ("-", "Table 4 rows 1, 3: M 38.0 -> 39.1"),
    "iou_thresh": ("-", "Table 4 rows 1, 4: IT alone 38.0 -> 36.9"),
    "label_smoothing": ("-", "Table 4 rows 1, 6: LS 38.0 -> 33.0"),
    "cmbn": ("+", "Table 4 rows 1, 7: CBN 38.0 -> 38.4", "bn_subdivisions"),
    "steps_schedule": ("-", "Table 4 rows 1, 8: CA 38.0 -> 38.7"),
    "dynamic_minibatch": ("-", "Table 4 rows 1, 9: DM 38.0 -> 35.3", "random_shapes"),
    "optimised_anchors": ("+", "Table 4 rows 13, 17: + OA 41.5 -> 42.4 (no single OA row)"),
    "mse": ("-", "Table 4 rows 2, 12: S+MSE 37.7, S+CIoU 39.6; rows 15, 17: 40.3, 42.4"),
    "giou": ("0", "Table 4 rows 10, 12: 39.4 vs 39.6; rows 16, 17: both 42.4"),
    "diou": ("-", "Table 4 rows 11, 12: 39.1 vs 39.6"),
}
