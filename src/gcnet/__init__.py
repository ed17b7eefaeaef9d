"""gcnet: GCNet (Global Context blocks) Mask R-CNN and Cascade Mask R-CNN in plain PyTorch.

Public API::

    import gcnet
    model = gcnet.build_detector("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco", checkpoint="...pth")
    detections = gcnet.predict(model, ["image.jpg"])   # boxes, scores, labels, masks per image
"""

from __future__ import annotations

from gcnet.checkpoint import load_checkpoint, save_checkpoint
from gcnet.config import Config, apply_overrides
from gcnet.inference import predict
from gcnet.layers import ContextBlock
from gcnet.models.detector import TwoStageDetector, build_model
from gcnet.structures import Detections, ImageMeta, Targets
from gcnet.zoo import ZOO, get_config, list_models

__version__ = "0.1.0"


def build_detector(
    name_or_config: str | Config,
    checkpoint: str | None = None,
    device: str | None = None,
    fast: bool = False,
) -> TwoStageDetector:
    """Build a zoo model by the seed's config name (or from a :class:`Config`), optionally loading
    a checkpoint (path, URL or ``"zoo"`` for the entry's published file), in eval mode.

    ``fast`` returns the inference-only mode of :func:`gcnet.speed.prepare_for_inference` (folded BN,
    channels-last, the fastest CPU conv kernels): same detections up to float rounding, ~0.63x the
    eager CPU time; train the plain model."""
    cfg = get_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    model = build_model(cfg.model, cfg.class_names)
    if checkpoint is not None:
        source = cfg.name if checkpoint == "zoo" else checkpoint
        load_checkpoint(model, source)
    if device is not None:
        model = model.to(device)
    if fast:
        from gcnet.speed import prepare_for_inference

        return prepare_for_inference(model.eval())
    return model.eval()


__all__ = [
    "Config", "ContextBlock", "Detections", "ImageMeta", "Targets", "TwoStageDetector", "ZOO",
    "apply_overrides", "build_detector", "build_model", "get_config", "list_models",
    "load_checkpoint", "predict", "save_checkpoint",
]
