"""The 19 published GCNet models, by the original's config names, with the seed's numbers.

Each entry's :class:`~gcnet.config.Config` is composed from the defaults (the original's Mask R-CNN
R-50 FPN 1x) with ``dataclasses.replace``, the way each original config only overrides
``model.backbone`` of its base (mmdet ``configs/gcnet/*.py``). Numbers and URLs are the seed's
README table (COCO 2017 val; V100; "-" in the seed becomes ``None`` here).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from typing import Optional

from gcnet.checkpoint.remote import sha256_prefix_in_name
from gcnet.config import (
    COCO_CLASSES,
    BackboneConfig,
    Config,
    ModelConfig,
    RoIConfig,
    RPNConfig,
    cascade_stages,
)

__all__ = [
    "ZOO",
    "ZooEntry",
    "UnknownModelError",
    "resnet_backbone",
    "mask_rcnn_config",
    "cascade_mask_rcnn_config",
    "get_config",
    "get_entry",
    "list_models",
]

_CKPT_ROOT = "https://download.openmmlab.com/mmdetection/v2.0/gcnet"

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
    fps: Optional[float]  # the seed's "Inf time (fps)"; None where the seed leaves it blank
    mem_gb: Optional[float]  # the seed's "Mem (GB)"; None where blank
    url: str  # checkpoint URL exactly as in the seed
    sha256_prefix: str  # the 8 hex digits closing the file name: first 8 of the file's sha256


def resnet_backbone(
    depth: int = 50,
    *,
    groups: int = 1,
    base_width: int = 64,
    syncbn: bool = False,
    gc_ratio: Optional[float] = None,
    dcn: bool = False,
) -> BackboneConfig:
    """Backbone settings the way the original's config names spell them.

    ``syncbn`` is the "syncbn-backbone" variant (SyncBN, ``norm_eval=False``); ``gc_ratio`` adds
    ContextBlocks after conv3 in c3-c5; ``dcn`` makes conv2 of c3-c5 deformable (v1).
    """
    if depth not in (50, 101, 152):
        raise ValueError(f"resnet_backbone: depth must be 50, 101 or 152, got {depth}")
    if gc_ratio is not None and not 0.0 < gc_ratio <= 1.0:
        raise ValueError(f"resnet_backbone: gc_ratio must be in (0, 1], got {gc_ratio}")
    return replace(
        BackboneConfig(),
        depth=depth,
        groups=groups,
        base_width=base_width,
        norm="syncbn" if syncbn else "bn",
        norm_eval=not syncbn,
        gc_ratio=gc_ratio,
        gc_stages=(False, True, True, True),
        dcn_stages=(False, True, True, True) if dcn else (False, False, False, False),
        pretrained=_PRETRAINED.get((depth, groups)),
    )


def _with_classes(roi: RoIConfig, class_names: tuple[str, ...]) -> RoIConfig:
    if not class_names:
        raise ValueError("class_names must name at least one class")
    return replace(roi, num_classes=len(class_names))


def mask_rcnn_config(
    backbone: Optional[BackboneConfig] = None,
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
    backbone: Optional[BackboneConfig] = None,
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


# (3.x config name, 2.x config name = checkpoint directory, time stamp-sha, mem GB, fps, box AP, mask AP)
_ROWS: tuple[tuple[str, str, str, Optional[float], Optional[float], float, float], ...] = (
    ("mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco", "mask_rcnn_r50_fpn_r16_gcb_c3-c5_1x_coco",
     "20200515_211915-187da160", 5.0, None, 39.7, 35.9),
    ("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco", "mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco",
     "20200204-17235656", 5.1, 15.0, 39.9, 36.0),
    ("mask-rcnn_r101-gcb-r16-c3-c5_fpn_1x_coco", "mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco",
     "20200205-e58ae947", 7.6, 11.4, 41.3, 37.2),
    ("mask-rcnn_r101-gcb-r4-c3-c5_fpn_1x_coco", "mask_rcnn_r101_fpn_r4_gcb_c3-c5_1x_coco",
     "20200206-af22dc9d", 7.8, 11.6, 42.2, 37.8),
    ("mask-rcnn_r50-syncbn_fpn_1x_coco", "mask_rcnn_r50_fpn_syncbn-backbone_1x_coco",
     "20200202-bb3eb55c", 4.4, 16.6, 38.4, 34.6),
    ("mask-rcnn_r50-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
     "mask_rcnn_r50_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
     "20200202-587b99aa", 5.0, 15.5, 40.4, 36.2),
    ("mask-rcnn_r50-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
     "mask_rcnn_r50_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
     "20200202-50b90e5c", 5.1, 15.1, 40.7, 36.5),
    ("mask-rcnn_r101-syncbn_fpn_1x_coco", "mask_rcnn_r101_fpn_syncbn-backbone_1x_coco",
     "20200210-81658c8a", 6.4, 13.3, 40.5, 36.3),
    ("mask-rcnn_r101-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
     "mask_rcnn_r101_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
     "20200207-945e77ca", 7.6, 12.0, 42.2, 37.8),
    ("mask-rcnn_r101-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
     "mask_rcnn_r101_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
     "20200206-8407a3f0", 7.8, 11.8, 42.2, 37.8),
    ("mask-rcnn_x101-32x4d-syncbn_fpn_1x_coco", "mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco",
     "20200211-7584841c", 7.6, 11.3, 42.4, 37.7),
    ("mask-rcnn_x101-32x4d-syncbn-gcb-r16-c3-c5_fpn_1x_coco",
     "mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
     "20200211-cbed3d2c", 8.8, 9.8, 43.5, 38.6),
    ("mask-rcnn_x101-32x4d-syncbn-gcb-r4-c3-c5_fpn_1x_coco",
     "mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
     "20200212-68164964", 9.0, 9.7, 43.9, 39.0),
    ("cascade-mask-rcnn_x101-32x4d-syncbn_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_1x_coco",
     "20200310-d5ad2a5e", 9.2, 8.4, 44.7, 38.6),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco",
     "20200211-10bf2463", 10.3, 7.7, 46.2, 39.7),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-r4-gcb-c3-c5_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r4_gcb_c3-c5_1x_coco",
     "20200703_180653-ed035291", 10.6, None, 46.4, 40.1),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_1x_coco",
     "20210615_211019-abbc39ea", None, None, 47.5, 40.9),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco",
     "20210615_215648-44aa598a", None, None, 48.0, 41.3),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r4-gcb-c3-c5_fpn_1x_coco",
     "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r4_gcb_c3-c5_1x_coco",
     "20210615_161851-720338ec", None, None, 47.9, 41.1),
)

# The settings a 2.x name spells out; the 3.x names say the same less regularly (r16-gcb / gcb-r16).
_LEGACY_NAME = re.compile(
    r"(?P<cascade>cascade_)?mask_rcnn_(?P<arch>r50|r101|x101_32x4d)_fpn(?P<syncbn>_syncbn-backbone)?"
    r"(?P<dcn>_dconv_c3-c5)?(?:_r(?P<gc>4|16)_gcb_c3-c5)?_1x_coco"
)


def _entry(row: tuple[str, str, str, Optional[float], Optional[float], float, float]) -> ZooEntry:
    """A zoo entry from a table row; the model settings are read off the 2.x name."""
    name, legacy, stamp, mem, fps, box, mask = row
    spelled = _LEGACY_NAME.fullmatch(legacy)
    if spelled is None:
        raise ValueError(f"zoo: cannot read the model settings from the 2.x config name {legacy!r}")
    x101 = spelled["arch"] == "x101_32x4d"
    backbone = resnet_backbone(
        50 if spelled["arch"] == "r50" else 101,
        groups=32 if x101 else 1,
        base_width=4 if x101 else 64,
        syncbn=spelled["syncbn"] is not None,
        gc_ratio=None if spelled["gc"] is None else 1.0 / int(spelled["gc"]),
        dcn=spelled["dcn"] is not None,
    )
    build = cascade_mask_rcnn_config if spelled["cascade"] else mask_rcnn_config
    url = f"{_CKPT_ROOT}/{legacy}/{legacy}_{stamp}.pth"
    sha256_prefix = sha256_prefix_in_name(url)
    if sha256_prefix is None:
        raise ValueError(f"zoo: the checkpoint name {url} carries no sha256 prefix")
    return ZooEntry(
        name=name,
        legacy_name=legacy,
        config=build(backbone, name=name),
        box_ap=box,
        mask_ap=mask,
        fps=fps,
        mem_gb=mem,
        url=url,
        sha256_prefix=sha256_prefix,
    )


ZOO: dict[str, ZooEntry] = {row[0]: _entry(row) for row in _ROWS}
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
    raise UnknownModelError(
        f"unknown model name {name!r}{hint} (see gcnet.zoo.list_models() for all {len(ZOO)} names)"
    )


def get_config(name: str) -> Config:
    """The :class:`Config` of a zoo model; unknown names raise with the closest matches listed."""
    return get_entry(name).config
