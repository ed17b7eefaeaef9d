"""The tiny GC detector that the speed, export, AMP and bench tests share: the zoo's structure
(GC r4 ResNet, FPN, RPN, shared-2fc box head, FCN mask head) at a size that runs in milliseconds."""

from __future__ import annotations

import dataclasses

import torch

from gcnet.config import (
    BackboneConfig,
    Config,
    DataConfig,
    FPNConfig,
    ModelConfig,
    RoIConfig,
    RoIStageConfig,
    RPNConfig,
    cascade_stages,
)
from gcnet.models.detector import TwoStageDetector

CLASSES = ("a", "b", "c")


def tiny_config(cascade: bool = False, scale: tuple[int, int] = (128, 96), **roi: object) -> Config:
    """R-18 GC r4, 32-channel FPN, 3 classes; ``roi`` overrides RoIConfig fields."""
    roi_cfg = RoIConfig(
        num_classes=len(CLASSES),
        in_channels=32,
        fc_channels=64,
        max_per_img=10,
        stages=cascade_stages() if cascade else (RoIStageConfig(),),
    )
    model = ModelConfig(
        backbone=BackboneConfig(depth=18, pretrained=None, gc_ratio=1 / 4),
        neck=FPNConfig(in_channels=(64, 128, 256, 512), out_channels=32),
        rpn=RPNConfig(in_channels=32, feat_channels=32, test_nms_pre=50, test_max_per_img=30),
        roi=dataclasses.replace(roi_cfg, **roi),  # type: ignore[arg-type]
    )
    return Config(name="tiny", model=model, data=DataConfig(scale=scale), class_names=CLASSES)


def tiny_detector(cascade: bool = False, seed: int = 0, **roi: object) -> TwoStageDetector:
    """The tiny detector with seeded random weights, in eval mode."""
    cfg = tiny_config(cascade, **roi)
    torch.manual_seed(seed)
    return TwoStageDetector(cfg.model, cfg.class_names).eval()
