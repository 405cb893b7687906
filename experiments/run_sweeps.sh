#!/usr/bin/env bash
# Re-runs the detector sweeps on yolov4_synthetic 2.0.0 at sweep scale (configs/sweep_detector.py),
# 3 seeds per variant, into experiments/results/<sweep>/ (each run's config, metrics and
# result.json are kept in git; checkpoints are ignored). Resumable: a rerun skips finished runs
# and resumes an interrupted one from its checkpoint, so it can continue across sessions:
#
#     nohup bash experiments/run_sweeps.sh > runs_sweeps.log 2>&1 &
#
# The variants run here are those of the paper's Tables 4 and 5 and the augmentations (10-11
# min a YOLOv4-tiny run, about 23 min a small-YOLOv4 run at 2400 updates: about 18 hours in
# all, across sessions; augmentation's two runs equal to bof_detector's are copied, not
# trained); the sweep files hold more (CBAM, MiWRC in the backbone, DropBlock, autodiff
# GIoU/MSE), left for a larger budget with --only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
run() {
  local sweep=$1 only=$2
  shift 2
  "$PY" -m experiments.ablate --sweep "configs/ablations/$sweep.py" \
    --workdir "experiments/results/$sweep" --only "$only" "$@"
}
run bof_detector baseline,no_grid_sensitivity,no_mosaic,iou_thresh,label_smoothing,bn_subdivisions,cmbn,steps_schedule,random_shapes,dynamic_minibatch,optimised_anchors,mse,giou,diou,autodiff_box_gradient
# augmentation's baseline and no_mosaic are bof_detector's runs (the same configs): copied.
run augmentation baseline,cutmix,no_mosaic,mixup,sat,no_hsv --reuse experiments/results/bof_detector
run bos_detector baseline,no_spp,fpn,sam,add_fusion,weighted_fusion,mish_neck
