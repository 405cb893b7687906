"""Evaluation and prediction: COCO AP with pycocotools (`coco`) and the jitted predict
function with its decoding and NMS options (`prediction`).
"""

from yolov4_jax.evaluation.coco import STAT_NAMES, CocoEvaluator, evaluate, shard_predict_fn

__all__ = ["STAT_NAMES", "CocoEvaluator", "evaluate", "shard_predict_fn"]
