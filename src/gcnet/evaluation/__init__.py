"""COCO evaluation: detections -> result dicts -> bbox / segm AP; the runner over a dataset."""

from gcnet.evaluation.coco_eval import CocoStats, evaluate_coco, faster_available, format_stats
from gcnet.evaluation.results import detections_to_coco, encode_masks, gather_results
from gcnet.evaluation.runner import evaluate_model

__all__ = [
    "CocoStats",
    "detections_to_coco",
    "encode_masks",
    "evaluate_coco",
    "evaluate_model",
    "faster_available",
    "format_stats",
    "gather_results",
]
