"""Typed, frozen configuration for models, data and training.

One :class:`Config` per model, built in Python and composed with ``dataclasses.replace``;
``gcnet.zoo`` maps the original's config names to these. Command-line overrides are dotted
paths (``train.lr=0.01``) applied by :func:`apply_overrides`.
Defaults are the original's Mask R-CNN R-50 FPN 1x COCO settings (see ``shared/spec``).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

NormType = Literal["bn", "syncbn", "frozen_bn"]
AmpType = Optional[Literal["bf16", "fp16"]]

COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet / ResNeXt as the original builds it for detection (style 'pytorch')."""

    depth: int = 50
    groups: int = 1
    base_width: int = 64
    base_channels: int = 64
    # GC block after conv3 of every bottleneck of the selected stages (c2..c5); None = no GC.
    gc_ratio: Optional[float] = None
    gc_stages: tuple[bool, bool, bool, bool] = (False, True, True, True)
    gc_pooling: Literal["att", "avg"] = "att"
    gc_fusions: tuple[str, ...] = ("channel_add",)
    # Deformable conv v1 replacing conv2 (3x3) of every bottleneck of the selected stages.
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    norm: NormType = "bn"
    norm_eval: bool = True
    frozen_stages: int = 1
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    # Where ImageNet weights come from when training starts ("torchvision://resnet50", a path, or None).
    pretrained: Optional[str] = "torchvision://resnet50"
    # From scratch (pretrained None): "original" = the original's Kaiming fan_out init, with the last
    # norm of every block at zero when zero_init_residual; "pytorch" = PyTorch's default layer init.
    scratch_init: Literal["original", "pytorch"] = "original"
    zero_init_residual: bool = True


@dataclass(frozen=True)
class FPNConfig:
    """FPN: c2..c5 in, ``num_outs`` levels out (p2..p6), as the original's Mask R-CNN neck."""

    in_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5


@dataclass(frozen=True)
class RPNConfig:
    """RPN head, anchors, proposal settings (train and test) and its target/loss settings."""

    in_channels: int = 256
    feat_channels: int = 256
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    scales: tuple[float, ...] = (8.0,)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # test-time proposals
    test_nms_pre: int = 1000
    test_max_per_img: int = 1000
    nms_iou: float = 0.7
    min_bbox_size: float = 0.0
    # train-time proposals
    train_nms_pre: int = 2000
    train_max_per_img: int = 1000
    # targets and losses
    pos_iou: float = 0.7
    neg_iou: float = 0.3
    min_pos_iou: float = 0.3
    match_low_quality: bool = True
    num_samples: int = 256
    pos_fraction: float = 0.5
    allowed_border: int = -1
    loss_bbox: Literal["l1", "smooth_l1"] = "l1"
    smooth_l1_beta: float = 1.0 / 9.0
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 1.0


@dataclass(frozen=True)
class RoIStageConfig:
    """One bbox (+ mask) stage: Mask R-CNN has one, Cascade Mask R-CNN three."""

    target_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    reg_class_agnostic: bool = False
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    min_pos_iou: float = 0.5
    match_low_quality: bool = True
    loss_weight: float = 1.0
    loss_bbox: Literal["l1", "smooth_l1"] = "l1"
    smooth_l1_beta: float = 1.0


def cascade_stages() -> tuple[RoIStageConfig, RoIStageConfig, RoIStageConfig]:
    """Cascade Mask R-CNN's three stages: IoU 0.5/0.6/0.7 without low-quality matches, halving
    box-coder stds, loss weights 1/0.5/0.25, class-agnostic regression with SmoothL1 (beta 1)."""
    stds = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
    return tuple(  # type: ignore[return-value]
        RoIStageConfig(target_stds=s, reg_class_agnostic=True, pos_iou=iou, neg_iou=iou,
                       min_pos_iou=iou, match_low_quality=False, loss_weight=w,
                       loss_bbox="smooth_l1", smooth_l1_beta=1.0)
        for s, iou, w in zip(stds, (0.5, 0.6, 0.7), (1.0, 0.5, 0.25))
    )


@dataclass(frozen=True)
class RoIConfig:
    """RoI heads: feature extraction, bbox/mask heads, per-stage settings, sampling, test-time NMS."""

    num_classes: int = 80
    in_channels: int = 256
    featmap_strides: tuple[int, ...] = (4, 8, 16, 32)
    finest_scale: int = 56
    bbox_roi_size: int = 7
    mask_roi_size: int = 14
    fc_channels: int = 1024
    mask_convs: int = 4
    mask_size: int = 28
    stages: tuple[RoIStageConfig, ...] = (RoIStageConfig(),)
    # sampling (every stage)
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    # test-time post-processing
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    mask_thr: float = 0.5

    @property
    def cascade(self) -> bool:
        return len(self.stages) > 1


@dataclass(frozen=True)
class ModelConfig:
    """The whole detector: backbone, neck, RPN and RoI heads (``with_mask`` adds the mask branch)."""

    backbone: BackboneConfig = BackboneConfig()
    neck: FPNConfig = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi: RoIConfig = RoIConfig()
    with_mask: bool = True


@dataclass(frozen=True)
class DataConfig:
    """Image pipeline of the original (resize keep-ratio, flip, normalise RGB, pad to 32)."""

    scale: tuple[int, int] = (1333, 800)  # (long edge max, short edge max)
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisor: int = 32
    flip_prob: float = 0.5
    images_per_gpu: int = 2
    workers_per_gpu: int = 2
    min_size: int = 32
    train_ann: Optional[str] = None
    train_images: Optional[str] = None
    val_ann: Optional[str] = None
    val_images: Optional[str] = None


@dataclass(frozen=True)
class TrainConfig:
    """The 1x schedule: SGD, linear warm-up, x0.1 at epochs 8 and 11, 12 epochs."""

    lr: float = 0.02
    base_batch_size: int = 16  # lr is scaled by (real total batch / base_batch_size)
    scale_lr: bool = True  # the original's auto_scale_lr, which it leaves off by default
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    milestones: tuple[int, ...] = (8, 11)
    gamma: float = 0.1
    epochs: int = 12
    grad_accum: int = 1
    amp: AmpType = None
    grad_clip: Optional[float] = None
    seed: int = 0
    log_interval: int = 50
    checkpoint_interval: int = 1
    eval_interval: int = 1
    # Also save work_dir/latest.pth every this many optimiser steps (0 = only at epoch ends).
    checkpoint_every_iters: int = 0
    # DDP's find_unused_parameters: only for models whose steps leave trainable parameters unused.
    find_unused_parameters: bool = False


@dataclass(frozen=True)
class Config:
    """One model's complete settings; ``name`` is the original's config name for zoo models."""

    name: str = "mask-rcnn_r50_fpn_1x_coco"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    class_names: tuple[str, ...] = field(default=COCO_CLASSES, repr=False)


def with_class_names(cfg: Config, class_names: tuple[str, ...]) -> Config:
    """``cfg`` for another set of classes: the names and the heads' class count change together."""
    roi = dataclasses.replace(cfg.model.roi, num_classes=len(class_names))
    return dataclasses.replace(cfg, class_names=tuple(class_names), model=dataclasses.replace(cfg.model, roi=roi))


class ConfigError(ValueError):
    """An override names a field that does not exist or gives a value of the wrong type."""


def _parse_value(text: str, annotation: Any, path: str) -> Any:
    """``text`` as a value of the field's type: a Python literal, else a bare string."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text  # bare strings: --set model.backbone.norm=syncbn
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        value = tuple(value)
    if origin is tuple and not isinstance(value, tuple):
        value = (value,)
    if annotation in (int, float, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{path}: expected {annotation.__name__}, got {text!r}")
    if origin is Literal and value not in args:
        raise ConfigError(f"{path}: expected one of {args}, got {text!r}")
    if origin is typing.Union and value is not None:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _parse_value(text, inner[0], path)
    return value


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Return ``cfg`` with each ``dotted.path=value`` override applied (values as Python literals)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        path, text = item.split("=", 1)
        cfg = _replace_path(cfg, path.strip().split("."), text.strip(), path.strip())
    return cfg


def _replace_path(obj: Any, parts: list[str], text: str, full: str) -> Any:
    """``obj`` with the field at ``parts`` replaced (frozen dataclasses are rebuilt on the way up)."""
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    head = parts[0]
    if head not in names:
        raise ConfigError(f"{full}: {type(obj).__name__} has no field {head!r} (fields: {sorted(names)})")
    if len(parts) == 1:
        return dataclasses.replace(obj, **{head: _parse_value(text, hints[head], full)})
    child = getattr(obj, head)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{full}: {head!r} is not a group of settings")
    return dataclasses.replace(obj, **{head: _replace_path(child, parts[1:], text, full)})
