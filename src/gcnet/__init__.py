"""gcnet: GCNet (Global Context blocks) Mask R-CNN and Cascade Mask R-CNN in plain PyTorch.

Public API::

    import gcnet
    model = gcnet.build_detector("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco", checkpoint="zoo")
    model = gcnet.build_detector("work_dirs/run/latest.pth")  # our files record config + classes
    detections = gcnet.predict(model, ["image.jpg"])   # boxes, scores, labels, masks per image
"""

from __future__ import annotations

from gcnet.build import build, build_detector
from gcnet.checkpoint import load_checkpoint, save_checkpoint
from gcnet.config import Config, apply_overrides
from gcnet.inference import predict
from gcnet.layers import ContextBlock
from gcnet.models.detector import TwoStageDetector, build_model
from gcnet.structures import Detections, ImageMeta, Targets
from gcnet.zoo import ZOO, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ContextBlock",
    "Detections",
    "ImageMeta",
    "Targets",
    "TwoStageDetector",
    "ZOO",
    "apply_overrides",
    "build",
    "build_detector",
    "build_model",
    "get_config",
    "list_models",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]
