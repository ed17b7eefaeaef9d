"""The zoo: 19 written-out seed rows, names and URLs as in the seed; the names cross-check the rows."""

from __future__ import annotations

import dataclasses
import doctest
import re
from pathlib import Path

import pytest

import gcnet.zoo
from gcnet.config import COCO_CLASSES, BackboneConfig, Config
from gcnet.zoo import (
    C3_C5,
    NO_STAGES,
    ROWS,
    ZOO,
    UnknownModelError,
    ZooRow,
    cascade_mask_rcnn_config,
    entry_from_row,
    get_config,
    get_entry,
    list_models,
    mask_rcnn_config,
    resnet_backbone,
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

        rows.append(
            dict(name=name, url=url, mem=num(cells[4]), fps=num(cells[5]), box=float(cells[6]), mask=float(cells[7]))
        )
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
    assert e.url == (
        "https://download.openmmlab.com/mmdetection/v2.0/gcnet/mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco/"
        "mask_rcnn_r50_fpn_r4_gcb_c3-c5_1x_coco_20200204-17235656.pth"
    )
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
        101,
        32,
        4,
        "syncbn",
        False,
        0.0625,
    )
    roi = e.config.model.roi
    assert roi.cascade and len(roi.stages) == 3
    assert [s.target_stds for s in roi.stages] == [
        (0.1, 0.1, 0.2, 0.2),
        (0.05, 0.05, 0.1, 0.1),
        (0.033, 0.033, 0.067, 0.067),
    ]
    assert [(s.pos_iou, s.neg_iou, s.min_pos_iou) for s in roi.stages] == [
        (0.5, 0.5, 0.5),
        (0.6, 0.6, 0.6),
        (0.7, 0.7, 0.7),
    ]
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
@pytest.mark.parametrize(
    "name, expected",
    [
        ("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco", 464),
        ("cascade-mask-rcnn_x101-32x4d-syncbn-r16-gcb-c3-c5_fpn_1x_coco", 946),
        (CASCADE, 1006),
    ],
)
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


# The settings a 2.x name spells out. The zoo no longer reads them (its rows are written out); here
# the grammar checks that each row says what its names say.
_LEGACY_NAME = re.compile(
    r"(?P<cascade>cascade_)?mask_rcnn_(?P<arch>r50|r101|x101_32x4d)_fpn(?P<syncbn>_syncbn-backbone)?"
    r"(?P<dcn>_dconv_c3-c5)?(?:_r(?P<gc>4|16)_gcb_c3-c5)?_1x_coco"
)
_PRETRAINED_BY_ARCH = {
    "r50": "torchvision://resnet50",
    "r101": "torchvision://resnet101",
    "x101_32x4d": "open-mmlab://resnext101_32x4d",
}


def _settings_from_legacy_name(legacy: str) -> dict:
    """The row fields a 2.x config name implies, read with the grammar above."""
    spelled = _LEGACY_NAME.fullmatch(legacy)
    assert spelled is not None, f"{legacy!r} does not fit the 2.x naming grammar"
    x101 = spelled["arch"] == "x101_32x4d"
    return dict(
        arch="cascade-mask-rcnn" if spelled["cascade"] else "mask-rcnn",
        depth=50 if spelled["arch"] == "r50" else 101,
        groups=32 if x101 else 1,
        base_width=4 if x101 else 64,
        norm="syncbn" if spelled["syncbn"] else "bn",
        gc_ratio=None if spelled["gc"] is None else 1.0 / int(spelled["gc"]),
        dcn_stages=C3_C5 if spelled["dcn"] else NO_STAGES,
        gc_stages=C3_C5,
        pretrained=_PRETRAINED_BY_ARCH[spelled["arch"]],
    )


def test_rows_are_the_zoo_in_seed_order():
    assert [row.name for row in ROWS] == list(ZOO) and len(ROWS) == 19
    for row in ROWS:
        e = ZOO[row.name]
        assert (e.legacy_name, e.url) == (row.legacy_name, row.url)
        assert (e.mem_gb, e.fps, e.box_ap, e.mask_ap) == (row.mem_gb, row.fps, row.box_ap, row.mask_ap)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_every_row_states_what_its_legacy_name_says(row):
    settings = _settings_from_legacy_name(row.legacy_name)
    assert {key: getattr(row, key) for key in settings} == settings
    # the config the name grammar used to build is exactly the config the row builds
    built = (cascade_mask_rcnn_config if settings["arch"] == "cascade-mask-rcnn" else mask_rcnn_config)(
        resnet_backbone(
            settings["depth"],
            groups=settings["groups"],
            base_width=settings["base_width"],
            syncbn=settings["norm"] == "syncbn",
            gc_ratio=settings["gc_ratio"],
            dcn=settings["dcn_stages"] == C3_C5,
        ),
        name=row.name,
    )
    assert ZOO[row.name].config == built


def _hypothetical_row(**changes) -> ZooRow:
    """A 20th model (R-50 GC r16 Cascade Mask R-CNN) whose names fit no grammar on purpose."""
    row = ZooRow(
        name="my-r50-gc16-cascade",
        legacy_name="experiment 20",
        arch="cascade-mask-rcnn",
        depth=50,
        groups=1,
        base_width=64,
        norm="bn",
        gc_ratio=1 / 16,
        dcn_stages=NO_STAGES,
        pretrained="torchvision://resnet50",
        mem_gb=None,
        fps=None,
        box_ap=41.0,
        mask_ap=36.0,
        url="https://example.org/checkpoints/r50_gc16_cascade_20990101-0123abcd.pth",
    )
    return dataclasses.replace(row, **changes)


def test_a_twentieth_row_needs_no_name_grammar():
    row = _hypothetical_row()
    assert _LEGACY_NAME.fullmatch(row.legacy_name) is None
    e = entry_from_row(row)
    assert (e.name, e.legacy_name, e.url, e.sha256_prefix) == (row.name, row.legacy_name, row.url, "0123abcd")
    assert (e.box_ap, e.mask_ap, e.fps, e.mem_gb) == (41.0, 36.0, None, None)
    expected = cascade_mask_rcnn_config(resnet_backbone(50, gc_ratio=1 / 16), name=row.name)
    assert e.config == expected and e.config.name == row.name
    bb = e.config.model.backbone
    assert (bb.gc_ratio, bb.gc_stages, bb.norm, bb.norm_eval) == (0.0625, C3_C5, "bn", True)
    assert e.config.model.roi.cascade and len(e.config.model.roi.stages) == 3
    # the row's own stages and weights are used, not ones implied by its depth or name
    other = entry_from_row(
        _hypothetical_row(gc_stages=(False, False, True, True), dcn_stages=C3_C5, pretrained=None, norm="syncbn")
    )
    bb = other.config.model.backbone
    assert (bb.gc_stages, bb.dcn_stages, bb.pretrained) == ((False, False, True, True), C3_C5, None)
    assert (bb.norm, bb.norm_eval) == ("syncbn", False)


@pytest.mark.parametrize(
    "changes, pattern",
    [
        (dict(arch="retinanet"), "arch"),
        (dict(norm="gn"), "norm"),
        (dict(depth=34), "depth"),
        (dict(gc_ratio=4.0), "gc_ratio"),
        (dict(url="https://example.org/no_hash.pth"), "sha256"),
    ],
)
def test_a_bad_row_is_refused_with_the_field_named(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        entry_from_row(_hypothetical_row(**changes))


def test_zoo_docstring_example_runs():
    failed, attempted = doctest.testmod(gcnet.zoo, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
