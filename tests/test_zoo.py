"""The zoo: 19 seed rows, names and URLs as in the seed, configs derived from the names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gcnet.config import COCO_CLASSES, BackboneConfig, Config
from gcnet.zoo import (
    ZOO,
    UnknownModelError,
    cascade_mask_rcnn_config,
    get_config,
    get_entry,
    list_models,
    mask_rcnn_config,
)

SEED = Path(__file__).resolve().parents[1] / ".." / "shared" / "seed" / "000_79a3816fa2429603.txt"
CASCADE = "cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco"


def _seed_rows() -> list[dict]:
    """Rows of the seed's two results tables, parsed from the markdown."""
    if not SEED.is_file():
        pytest.skip(f"seed file not found at {SEED}")
    rows = []
    for line in SEED.read_text(encoding="utf-8").splitlines():
        if "[config](" not in line:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.search(r"\[config\]\(\./(.+?)\.py\)", line).group(1)
        url = re.search(r"\[model\]\((\S+?\.pth)\)", line).group(1)

        def num(text: str) -> float | None:
            return float(text) if text else None

        rows.append(dict(name=name, url=url, mem=num(cells[4]), fps=num(cells[5]),
                         box=float(cells[6]), mask=float(cells[7])))
    return rows


def test_nineteen_entries_in_seed_order_with_seed_names_and_urls():
    rows = _seed_rows()
    assert len(ZOO) == 19 and len(rows) == 19
    assert list_models() == [r["name"] for r in rows]
    for r in rows:
        e = ZOO[r["name"]]
        assert e.name == r["name"]
        assert e.url == r["url"]
        assert (e.mem_gb, e.fps, e.box_ap, e.mask_ap) == (r["mem"], r["fps"], r["box"], r["mask"])
        assert e.config.name == r["name"]


def test_representative_rows_literal_values():
    e = ZOO["mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"]
    assert e.legacy_name == "mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco"
    assert e.sha256_prefix == "17235656"
    assert e.url == ("https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco/"
                     "mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco_20200204-17235656.pth")
    assert (e.box_ap, e.mask_ap, e.fps, e.mem_gb) == (39.9, 36.0, 15.0, 5.1)
    bb = e.config.model.backbone
    assert (bb.depth, bb.groups, bb.base_width, bb.norm, bb.norm_eval) == (50, 1, 64, "bn", True)
    assert bb.gc_ratio == 0.25 and bb.gc_stages == (False, True, True, True)
    assert bb.dcn_stages == (False, False, False, False)
    assert bb.pretrained == "torchvision://resnet50"
    roi, rpn = e.config.model.roi, e.config.model.rpn
    assert len(roi.stages) == 1 and not roi.cascade
    assert roi.stages[0].target_stds == (0.1, 0.1, 0.2, 0.2) and not roi.stages[0].reg_class_agnostic
    assert roi.stages[0].match_low_quality and roi.stages[0].loss_bbox == "l1"
    assert (rpn.allowed_border, rpn.loss_bbox, rpn.train_max_per_img) == (-1, "l1", 1000)
    assert roi.num_classes == 80 and e.config.class_names == COCO_CLASSES

    assert ZOO["mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco"].fps is None
    assert ZOO["mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco"].sha256_prefix == "187da160"

    bb = ZOO["mask-rcnn_r101-syncbn_fpn_1x_coco"].config.model.backbone
    assert (bb.depth, bb.groups, bb.norm, bb.norm_eval, bb.gc_ratio) == (101, 1, "syncbn", False, None)
    assert bb.pretrained == "torchvision://resnet101"

    e = ZOO["mask-rcnn_x101-32x4d-syncbn-gcb-r16-c3-c5_fpn_1x_coco"]
    bb = e.config.model.backbone
    assert (bb.depth, bb.groups, bb.base_width, bb.gc_ratio) == (101, 32, 4, 0.0625)
    assert bb.pretrained == "open-mmlab://resnext101_32x4d"
    assert e.legacy_name == "mask_rcnn_x101_32x4d_fpn_syncbn-backbone_r16_gcb_c3-c5_1x_coco"


def test_cascade_dcn_row_literal_values():
    e = ZOO[CASCADE]
    assert e.legacy_name == "cascade_mask_rcnn_x101_32x4d_fpn_syncbn-backbone_dconv_c3-c5_r16_gcb_c3-c5_1x_coco"
    assert e.sha256_prefix == "44aa598a"
    assert (e.box_ap, e.mask_ap, e.fps, e.mem_gb) == (48.0, 41.3, None, None)
    bb = e.config.model.backbone
    assert bb.dcn_stages == (False, True, True, True)
    assert (bb.depth, bb.groups, bb.base_width, bb.norm, bb.norm_eval, bb.gc_ratio) == (
        101, 32, 4, "syncbn", False, 0.0625)
    roi = e.config.model.roi
    assert roi.cascade and len(roi.stages) == 3
    assert [s.target_stds for s in roi.stages] == [
        (0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067)]
    assert [(s.pos_iou, s.neg_iou, s.min_pos_iou) for s in roi.stages] == [
        (0.5, 0.5, 0.5), (0.6, 0.6, 0.6), (0.7, 0.7, 0.7)]
    assert [s.loss_weight for s in roi.stages] == [1.0, 0.5, 0.25]
    assert all(s.reg_class_agnostic and not s.match_low_quality for s in roi.stages)
    assert all(s.loss_bbox == "smooth_l1" and s.smooth_l1_beta == 1.0 for s in roi.stages)
    rpn = e.config.model.rpn
    assert (rpn.allowed_border, rpn.loss_bbox, rpn.train_max_per_img) == (0, "smooth_l1", 2000)
    assert rpn.smooth_l1_beta == pytest.approx(1 / 9)
    # everything the cascade does not change stays at the Mask R-CNN defaults
    assert (rpn.train_nms_pre, rpn.test_nms_pre, rpn.nms_iou) == (2000, 1000, 0.7)
    assert (roi.score_thr, roi.nms_iou, roi.max_per_img, roi.num_samples) == (0.05, 0.5, 100, 512)


@pytest.mark.parametrize("name", list(ZOO))
def test_every_entry_matches_what_both_names_say(name):
    """Derive the settings from the 3.x name and from the 2.x checkpoint directory independently."""
    e = ZOO[name]
    url_dir, file_name = e.url.split("/")[-2:]
    assert e.url.startswith("https://download.openmmlab.com/mmdetection/v2.0/gcnet/")
    assert url_dir == e.legacy_name and file_name.startswith(e.legacy_name + "_")
    assert e.sha256_prefix == file_name[-12:-4] and re.fullmatch(r"[0-9a-f]{8}", e.sha256_prefix)
    bb, roi = e.config.model.backbone, e.config.model.roi
    for text in (name, e.legacy_name):
        x101 = "x101" in text and "32x4d" in text
        assert bb.depth == (101 if ("r101" in text or x101) else 50)
        assert (bb.groups, bb.base_width) == ((32, 4) if x101 else (1, 64))
        assert (bb.norm == "syncbn") == ("syncbn" in text) and bb.norm_eval == ("syncbn" not in text)
        gc = re.search(r"gcb-r(4|16)|r(4|16)[-_]gcb", text)  # 3.x spells both orders
        assert bb.gc_ratio == (None if gc is None else 1 / int(gc.group(1) or gc.group(2)))
        assert bb.dcn_stages == ((False, True, True, True) if "dconv" in text else (False,) * 4)
        assert roi.cascade == text.startswith("cascade")
    assert bb.frozen_stages == 1 and bb.out_indices == (0, 1, 2, 3)


def test_configs_are_frozen_and_composed_from_defaults():
    cfg = get_config("mask-rcnn_r50-syncbn_fpn_1x_coco")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "x"  # type: ignore[misc]
    default = Config()
    assert cfg.model.neck == default.model.neck and cfg.model.rpn == default.model.rpn
    assert cfg.model.roi == default.model.roi and cfg.train == default.train and cfg.data == default.data


def test_builders_reuse_for_other_classes():
    bb = dataclasses.replace(BackboneConfig(), gc_ratio=0.25)
    cfg = mask_rcnn_config(bb, name="demo", class_names=("circle", "square"))
    assert cfg.name == "demo" and cfg.class_names == ("circle", "square")
    assert cfg.model.roi.num_classes == 2 and cfg.model.backbone.gc_ratio == 0.25
    cas = cascade_mask_rcnn_config(class_names=("a", "b", "c"))
    assert cas.name == "cascade-mask-rcnn_r50_fpn_1x_coco" and cas.model.roi.num_classes == 3
    assert cas.model.backbone == BackboneConfig() and len(cas.model.roi.stages) == 3
    with pytest.raises(ValueError, match="class"):
        mask_rcnn_config(class_names=())


def test_get_config_accepts_file_and_legacy_names():
    target = ZOO["mask-rcnn_r101-gcb-r16-c3-c5_fpn_1x_coco"]
    assert get_config("./mask-rcnn_r101-gcb-r16-c3-c5_fpn_1x_coco.py") is target.config
    assert get_config("configs/gcnet/mask-rcnn_r101-gcb-r16-c3-c5_fpn_1x_coco.py") is target.config
    assert get_entry("mask_rcnn_r101_fpn_r16_gcb_c3-c5_1x_coco") is target


def test_unknown_name_lists_close_matches():
    with pytest.raises(UnknownModelError) as info:
        get_config("mask-rcnn_r50-gcb-r16_fpn_1x_coco")
    message = str(info.value)
    assert "'mask-rcnn_r50-gcb-r16_fpn_1x_coco'" in message
    assert "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco" in message
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownModelError, match="list_models"):
        get_config("yolo")


# whole-model state_dict sizes of the original (spec: 464 / 946 / 1006 entries)
@pytest.mark.parametrize("name, expected", [
    ("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco", 464),
    ("cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco", 946),
    (CASCADE, 1006),
])
def test_zoo_configs_build_models_with_the_originals_key_count(name, expected):
    detector = pytest.importorskip("gcnet.models.detector")
    import torch

    cfg = get_config(name)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = detector.TwoStageDetector(cfg.model, cfg.class_names)
    sd = model.state_dict()
    assert len(sd) == expected
    if "x101" in name:
        assert tuple(sd["backbone.layer3.0.conv2.weight"].shape) == (512, 16, 3, 3)
    if "dconv" in name:
        assert tuple(sd["backbone.layer3.0.conv2.conv_offset.weight"].shape) == (18, 512, 3, 3)
