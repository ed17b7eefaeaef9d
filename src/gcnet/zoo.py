"""The 19 published GCNet models, one written-out row each, with the seed's numbers.

:data:`ROWS` is the catalogue. Each :class:`ZooRow` states its model as data (architecture,
backbone depth and width, norm, GC ratio, DCN stages, pretrained weights) next to the seed's
numbers, both config names and the checkpoint URL, so a new model is one more row and nothing is
read off a name. :func:`entry_from_row` composes each row's :class:`~gcnet.config.Config` from the
defaults (the original's Mask R-CNN R-50 FPN 1x) with ``dataclasses.replace``, the way each original
config only overrides ``model.backbone`` of its base (mmdet ``configs/gcnet/*.py``). Numbers and URLs
are the seed's README table (COCO 2017 val; V100; a blank cell in the seed is ``None`` here).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Literal

from gcnet.checkpoint.remote import sha256_prefix_in_name
from gcnet.config import (
    COCO_CLASSES,
    BackboneConfig,
    Config,
    DataConfig,
    FPNConfig,
    ModelConfig,
    RoIConfig,
    RPNConfig,
    TrainConfig,
    cascade_stages,
)
from gcnet.data.synthetic import SHAPE_CLASSES

__all__ = [
    "ZOO",
    "ROWS",
    "ZooEntry",
    "ZooRow",
    "UnknownModelError",
    "C3_C5",
    "NO_STAGES",
    "resnet_backbone",
    "mask_rcnn_config",
    "cascade_mask_rcnn_config",
    "entry_from_row",
    "get_config",
    "get_entry",
    "list_models",
    "DEMO_NAME",
    "demo_config",
]

Stages = tuple[bool, bool, bool, bool]  # one flag per backbone stage, c2..c5
Arch = Literal["mask-rcnn", "cascade-mask-rcnn"]

C3_C5: Stages = (False, True, True, True)  # the seed's "c3-c5" (GC and DCN alike)
NO_STAGES: Stages = (False, False, False, False)

_PRETRAINED = {
    (50, 1): "torchvision://resnet50",
    (101, 1): "torchvision://resnet101",
    (101, 32): "open-mmlab://resnext101_32x4d",
}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not in the zoo; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ZooEntry:
    """One row of the seed's results table."""

    name: str  # the seed's config name (3.x spelling, no ``./`` and no ``.py``)
    legacy_name: str  # the 2.x config name = the checkpoint's directory on download.openmmlab.com
    config: Config
    box_ap: float
    mask_ap: float
    fps: float | None  # the seed's "Inf time (fps)"; None where the seed leaves it blank
    mem_gb: float | None  # the seed's "Mem (GB)"; None where blank
    url: str  # checkpoint URL exactly as in the seed
    sha256_prefix: str  # the 8 hex digits closing the file name: first 8 of the file's sha256


@dataclass(frozen=True, kw_only=True)
class ZooRow:
    """One model of the catalogue, its settings written out so that no name has to be parsed.

    A new model is one more row; its names may be anything, e.g. a (hypothetical) R-50 GC r16
    Cascade Mask R-CNN:

    >>> row = ZooRow(
    ...     name="cascade-mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco",
    ...     legacy_name="cascade_mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
    ...     arch="cascade-mask-rcnn", depth=50, groups=1, base_width=64, norm="bn",
    ...     gc_ratio=1 / 16, dcn_stages=NO_STAGES, pretrained="torchvision://resnet50",
    ...     mem_gb=None, fps=None, box_ap=0.0, mask_ap=0.0,
    ...     url="https://example.org/cascade_mask_rcnn_r50_gc_r16_20990101-0123abcd.pth",
    ... )
    >>> entry = entry_from_row(row)
    >>> entry.config.model.roi.cascade, entry.config.model.backbone.gc_ratio, entry.sha256_prefix
    (True, 0.0625, '0123abcd')
    """

    name: str  # the seed's config name (3.x spelling)
    legacy_name: str  # the 2.x config name = the checkpoint's directory
    arch: Arch
    depth: int
    groups: int  # ResNeXt cardinality; 1 = ResNet
    base_width: int  # width per group; 64 = ResNet
    norm: Literal["bn", "syncbn"]  # "syncbn" = the 2.x "syncbn-backbone" (and norm_eval off)
    gc_ratio: float | None  # ContextBlock bottleneck ratio after conv3; None = no GC
    dcn_stages: Stages  # stages whose conv2 is deformable (v1)
    pretrained: str | None  # ImageNet weights the training started from
    mem_gb: float | None  # the seed's "Mem (GB)"
    fps: float | None  # the seed's "Inf time (fps)"
    box_ap: float
    mask_ap: float
    url: str  # checkpoint URL exactly as in the seed; its name ends in the sha256 prefix
    gc_stages: Stages = C3_C5  # stages with GC blocks (every seed model: c3-c5)


def resnet_backbone(
    depth: int = 50,
    *,
    groups: int = 1,
    base_width: int = 64,
    syncbn: bool = False,
    gc_ratio: float | None = None,
    dcn: bool = False,
) -> BackboneConfig:
    """Backbone settings the way the original's config names spell them.

    ``syncbn`` is the "syncbn-backbone" variant (SyncBN, ``norm_eval=False``); ``gc_ratio`` adds
    ContextBlocks after conv3 in c3-c5; ``dcn`` makes conv2 of c3-c5 deformable (v1).
    """
    if depth not in (50, 101, 152):  # the zoo's bottleneck depths (BackboneConfig checks gc_ratio)
        raise ValueError(f"resnet_backbone: depth must be 50, 101 or 152, got {depth}")
    return replace(
        BackboneConfig(),
        depth=depth,
        groups=groups,
        base_width=base_width,
        norm="syncbn" if syncbn else "bn",
        norm_eval=not syncbn,
        gc_ratio=gc_ratio,
        gc_stages=C3_C5,
        dcn_stages=C3_C5 if dcn else NO_STAGES,
        pretrained=_PRETRAINED.get((depth, groups)),
    )


def _with_classes(roi: RoIConfig, class_names: tuple[str, ...]) -> RoIConfig:
    if not class_names:
        raise ValueError("class_names must name at least one class")
    return replace(roi, num_classes=len(class_names))


def mask_rcnn_config(
    backbone: BackboneConfig | None = None,
    *,
    name: str = "mask-rcnn_r50_fpn_1x_coco",
    class_names: tuple[str, ...] = COCO_CLASSES,
) -> Config:
    """Mask R-CNN FPN 1x (the defaults of ``gcnet.config``) with the given backbone and classes."""
    base = Config()
    model = replace(
        base.model,
        backbone=backbone if backbone is not None else base.model.backbone,
        roi=_with_classes(base.model.roi, tuple(class_names)),
    )
    return replace(base, name=name, model=model, class_names=tuple(class_names))


def cascade_mask_rcnn_config(
    backbone: BackboneConfig | None = None,
    *,
    name: str = "cascade-mask-rcnn_r50_fpn_1x_coco",
    class_names: tuple[str, ...] = COCO_CLASSES,
) -> Config:
    """Cascade Mask R-CNN FPN 1x: three class-agnostic stages at IoU 0.5/0.6/0.7.

    Differs from Mask R-CNN only in the RoI stages and in the RPN's training settings
    (allowed_border 0, SmoothL1 beta 1/9, 2000 train proposals), as the original's base config does.
    """
    base = mask_rcnn_config(backbone, name=name, class_names=class_names)
    stages = cascade_stages()
    rpn: RPNConfig = replace(
        base.model.rpn,
        allowed_border=0,
        loss_bbox="smooth_l1",
        smooth_l1_beta=1.0 / 9.0,
        train_max_per_img=2000,
    )
    model: ModelConfig = replace(base.model, rpn=rpn, roi=replace(base.model.roi, stages=stages))
    return replace(base, model=model)


_BUILDERS = {"mask-rcnn": mask_rcnn_config, "cascade-mask-rcnn": cascade_mask_rcnn_config}


def entry_from_row(row: ZooRow) -> ZooEntry:
    """The zoo entry of a written-out row; the names are carried, never parsed, so any row fits."""
    if row.arch not in _BUILDERS:
        raise ValueError(f"zoo: {row.name}: arch must be one of {sorted(_BUILDERS)}, got {row.arch!r}")
    if row.norm not in ("bn", "syncbn"):
        raise ValueError(f"zoo: {row.name}: norm must be 'bn' or 'syncbn', got {row.norm!r}")
    backbone = replace(
        resnet_backbone(
            row.depth,
            groups=row.groups,
            base_width=row.base_width,
            syncbn=row.norm == "syncbn",
            gc_ratio=row.gc_ratio,
        ),
        gc_stages=row.gc_stages,
        dcn_stages=row.dcn_stages,
        pretrained=row.pretrained,
    )
    sha256_prefix = sha256_prefix_in_name(row.url)
    if sha256_prefix is None:
        raise ValueError(f"zoo: {row.name}: the checkpoint name {row.url} carries no sha256 prefix")
    return ZooEntry(
        name=row.name,
        legacy_name=row.legacy_name,
        config=_BUILDERS[row.arch](backbone, name=row.name),
        box_ap=row.box_ap,
        mask_ap=row.mask_ap,
        fps=row.fps,
        mem_gb=row.mem_gb,
        url=row.url,
        sha256_prefix=sha256_prefix,
    )


# The seed's two tables, in its order: Table 1 (BN backbones), then Table 2 (SyncBN backbones).
ROWS: tuple[ZooRow, ...] = (
    ZooRow(
        name="mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="bn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=5.0,
        fps=None,
        box_ap=39.7,
        mask_ap=35.9,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco/mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco_20200515_211915-187da160.pth",
    ),
    ZooRow(
        name="mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="bn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=5.1,
        fps=15.0,
        box_ap=39.9,
        mask_ap=36.0,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco_20200204-17235656.pth",
    ),
    ZooRow(
        name="mask-rcnn_r101-gcb-r16-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=1,
        base_width=64,
        norm="bn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet101",
        mem_gb=7.6,
        fps=11.4,
        box_ap=41.3,
        mask_ap=37.2,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco/mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco_20200205-e58ae947.pth",
    ),
    ZooRow(
        name="mask-rcnn_r101-gcb-r4-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r101_fpn_r4_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=1,
        base_width=64,
        norm="bn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet101",
        mem_gb=7.8,
        fps=11.6,
        box_ap=42.2,
        mask_ap=37.8,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r101_fpn_r4_gcb_c3-c5_1x_coco/mask_rcnn_r101_fpn_r4_gcb_c3-c5_1x_coco_20200206-af22dc9d.pth",
    ),
    ZooRow(
        name="mask-rcnn_r50-syncbn_fpn_1x_coco",
        legacy_name="mask_rcnn_r50_fpn_syncbn-backbone_1x_coco",
        arch="mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=None,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=4.4,
        fps=16.6,
        box_ap=38.4,
        mask_ap=34.6,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_syncbn-backbone_1x_coco/mask_rcnn_r50_fpn_syncbn-backbone_1x_coco_20200202-bb3eb55c.pth",
    ),
    ZooRow(
        name="mask-rcnn_r50-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=5.0,
        fps=15.5,
        box_ap=40.4,
        mask_ap=36.2,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco/mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200202-587b99aa.pth",
    ),
    ZooRow(
        name="mask-rcnn_r50-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r50_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=5.1,
        fps=15.1,
        box_ap=40.7,
        mask_ap=36.5,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco/mask_rcnn_r50_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco_20200202-50b90e5c.pth",
    ),
    ZooRow(
        name="mask-rcnn_r101-syncbn_fpn_1x_coco",
        legacy_name="mask_rcnn_r101_fpn_syncbn-backbone_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=None,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet101",
        mem_gb=6.4,
        fps=13.3,
        box_ap=40.5,
        mask_ap=36.3,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r101_fpn_syncbn-backbone_1x_coco/mask_rcnn_r101_fpn_syncbn-backbone_1x_coco_20200210-81658c8a.pth",
    ),
    ZooRow(
        name="mask-rcnn_r101-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r101_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet101",
        mem_gb=7.6,
        fps=12.0,
        box_ap=42.2,
        mask_ap=37.8,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r101_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco/mask_rcnn_r101_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200207-945e77ca.pth",
    ),
    ZooRow(
        name="mask-rcnn_r101-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_r101_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=1,
        base_width=64,
        norm="syncbn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet101",
        mem_gb=7.8,
        fps=11.8,
        box_ap=42.2,
        mask_ap=37.8,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r101_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco/mask_rcnn_r101_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco_20200206-8407a3f0.pth",
    ),
    ZooRow(
        name="mask-rcnn_x101-32x4d-syncbn_fpn_1x_coco",
        legacy_name="mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=None,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=7.6,
        fps=11.3,
        box_ap=42.4,
        mask_ap=37.7,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco_20200211-7584841c.pth",
    ),
    ZooRow(
        name="mask-rcnn_x101-32x4d-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=8.8,
        fps=9.8,
        box_ap=43.5,
        mask_ap=38.6,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200211-cbed3d2c.pth",
    ),
    ZooRow(
        name="mask-rcnn_x101-32x4d-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
        legacy_name="mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
        arch="mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=9.0,
        fps=9.7,
        box_ap=43.9,
        mask_ap=39.0,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco/mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco_20200212-68164964.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=None,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=9.2,
        fps=8.4,
        box_ap=44.7,
        mask_ap=38.6,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco_20200310-d5ad2a5e.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=10.3,
        fps=7.7,
        box_ap=46.2,
        mask_ap=39.7,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco_20200211-10bf2463.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn-r4-gcb-c3-c5_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 4,
        dcn_stages=NO_STAGES,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=10.6,
        fps=None,
        box_ap=46.4,
        mask_ap=40.1,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco_20200703_180653-ed035291.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=None,
        dcn_stages=C3_C5,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=None,
        fps=None,
        box_ap=47.5,
        mask_ap=40.9,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_1x_coco_20210615_211019-abbc39ea.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 16,
        dcn_stages=C3_C5,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=None,
        fps=None,
        box_ap=48.0,
        mask_ap=41.3,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco_20210615_215648-44aa598a.pth",
    ),
    ZooRow(
        name="cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r4-gcb-c3-c5_fpn_1x_coco",
        legacy_name="cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco",
        arch="cascade-mask-rcnn",
        depth=101,
        groups=32,
        base_width=4,
        norm="syncbn",
        gc_ratio=1 / 4,
        dcn_stages=C3_C5,
        pretrained="open-mmlab://resnext101_32x4d",
        mem_gb=None,
        fps=None,
        box_ap=47.9,
        mask_ap=41.1,
        url="https://download.openmmlab.com/mmdetection/v2.0/gcnet/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco/cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco_20210615_161851-720338ec.pth",
    ),
)

ZOO: dict[str, ZooEntry] = {row.name: entry_from_row(row) for row in ROWS}
_BY_LEGACY: dict[str, str] = {e.legacy_name: e.name for e in ZOO.values()}


def list_models() -> list[str]:
    """The zoo's config names, in the seed table's order."""
    return list(ZOO)


def _normalise(name: str) -> str:
    """Accept ``./name.py``, ``configs/gcnet/name.py`` or a bare name."""
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-3] if base.endswith(".py") else base


def get_entry(name: str) -> ZooEntry:
    """The zoo entry for a config name (3.x name, or the 2.x name used by the checkpoint dirs)."""
    key = _normalise(name)
    if key in ZOO:
        return ZOO[key]
    if key in _BY_LEGACY:
        return ZOO[_BY_LEGACY[key]]
    close = difflib.get_close_matches(key, list(ZOO) + list(_BY_LEGACY), n=5, cutoff=0.5)
    hint = ("; did you mean: " + ", ".join(close)) if close else ""
    raise UnknownModelError(f"unknown model name {name!r}{hint} (see gcnet.zoo.list_models() for all {len(ZOO)} names)")


def get_config(name: str) -> Config:
    """The :class:`Config` of a zoo model or of ``gcnet-demo``; unknown names raise with the
    closest matches listed."""
    return demo_config() if name == DEMO_NAME else get_entry(name).config


# ---- the embedded default ----------------------------------------------------------------------
# Not a published model: the small GC r4 Mask R-CNN that `gcnet demo` trains on the synthetic shapes
# set. Same architecture as the published models (GC r4 in every block of c3-c5, FPN, RPN, shared-2fc
# box head, FCN mask head), only smaller (ResNet-18 layout, base width 16, FPN 64 channels, 64 sampled
# RoIs per image) and on 160x160 images, so that it trains on a 2-core CPU in minutes. In ResNet-18's
# basic blocks the GC block sits after conv2 -> bn2, the block's last conv, as after conv3 in a
# bottleneck. The backbone starts from random weights, so BN trains and no stage is frozen.

DEMO_NAME = "gcnet-demo"
DEMO_IMAGE_SIZE = (160, 160)


def demo_config() -> Config:
    """A small GC r4 Mask R-CNN for 160x160 images of five shape classes."""
    width = 16
    feats = (width, 2 * width, 4 * width, 8 * width)
    channels = 64
    model = ModelConfig(
        backbone=BackboneConfig(
            depth=18,
            base_channels=width,
            gc_ratio=1 / 4,
            norm="bn",
            norm_eval=False,
            frozen_stages=-1,
            pretrained=None,
            # this 8-epoch run from random weights learns faster from PyTorch's default init than from
            # the original's (Kaiming fan_out + zero-initialised last norms): held-out bbox / segm AP
            # 0.695 / 0.709 vs 0.512 / 0.564 (0.464 / 0.499 without the zero init), same seed
            scratch_init="pytorch",
        ),
        neck=FPNConfig(in_channels=feats, out_channels=channels),
        rpn=RPNConfig(
            in_channels=channels,
            feat_channels=channels,
            scales=(4.0,),
            train_nms_pre=300,
            train_max_per_img=150,
            test_nms_pre=300,
            test_max_per_img=150,
        ),
        roi=RoIConfig(
            num_classes=len(SHAPE_CLASSES), in_channels=channels, fc_channels=256, num_samples=64, max_per_img=50
        ),
    )
    data = DataConfig(scale=(DEMO_IMAGE_SIZE[1], DEMO_IMAGE_SIZE[0]), images_per_gpu=4, workers_per_gpu=1)
    train = TrainConfig(
        lr=0.02,
        grad_clip=10.0,
        scale_lr=False,
        warmup_iters=100,
        epochs=8,
        milestones=(6, 7),
        log_interval=20,
        eval_interval=8,
    )
    return Config(name=DEMO_NAME, model=model, data=data, train=train, class_names=SHAPE_CLASSES)
