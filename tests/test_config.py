"""Configs check themselves when built, take dotted overrides down to tuple items, and survive the
round trip through the plain data a checkpoint records."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

import gcnet.demo
import gcnet.zoo
from gcnet.config import (
    BackboneConfig,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    RoIConfig,
    RoIStageConfig,
    RPNConfig,
    TrainConfig,
    apply_overrides,
    config_diff,
    config_from_dict,
    config_to_dict,
    with_class_names,
)
from gcnet.models import config as model_config

CASCADE = "cascade-mask-rcnn_x101-32x4d-syncbn-dconv-c3-c5-r16-gcb-c3-c5_fpn_1x_coco"


def _error(overrides: list[str], cfg: Config | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg or Config(), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_the_core_owns_the_model_and_data_settings_and_the_catalogue_re_exports_them() -> None:
    assert RPNConfig is model_config.RPNConfig and ConfigError is model_config.ConfigError
    assert issubclass(ConfigError, ValueError)
    assert DataConfig.__module__ == "gcnet.data.config"
    assert Config().class_names is model_config.COCO_CLASSES and len(model_config.COCO_CLASSES) == 80


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_an_override_reaches_one_cascade_stage(stage: int) -> None:
    cfg = gcnet.zoo.get_config(CASCADE)
    new = apply_overrides(
        cfg,
        [
            f"model.roi.stages.{stage}.pos_iou=0.65",
            f"model.roi.stages.{stage}.neg_iou=0.65",
            f"model.roi.stages.{stage}.target_stds.3=0.5",
        ],
    )
    for i, (old, now) in enumerate(zip(cfg.model.roi.stages, new.model.roi.stages)):
        assert isinstance(now, RoIStageConfig)
        if i == stage:
            assert (now.pos_iou, now.neg_iou, now.target_stds[3]) == (0.65, 0.65, 0.5)
            assert now.target_stds[:3] == old.target_stds[:3]
        else:
            assert now == old
    assert config_diff(cfg, new) == [
        f"model.roi.stages.{stage}.target_stds: {cfg.model.roi.stages[stage].target_stds!r} -> "
        f"{new.model.roi.stages[stage].target_stds!r}",
        f"model.roi.stages.{stage}.pos_iou: {cfg.model.roi.stages[stage].pos_iou!r} -> 0.65",
        f"model.roi.stages.{stage}.neg_iou: {cfg.model.roi.stages[stage].neg_iou!r} -> 0.65",
    ]


def test_overrides_reach_tuple_items_and_parse_by_the_fields_type() -> None:
    cfg = apply_overrides(
        Config(),
        [
            "model.backbone.gc_stages.0=True",
            "data.scale.0=1000",
            "train.lr=1",
            "model.backbone.norm=syncbn",
            "model.backbone.pretrained=open-mmlab://x",
            "name=123",
            "data.mean=(1, 2, 3)",
        ],
    )
    assert cfg.model.backbone.gc_stages == (True, True, True, True)
    assert cfg.data.scale == (1000, 800)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.backbone.norm == "syncbn" and cfg.model.backbone.pretrained == "open-mmlab://x"
    assert cfg.name == "123" and cfg.data.mean == (1.0, 2.0, 3.0)


def test_bool_settings_take_true_and_false_in_any_case() -> None:
    cfg = apply_overrides(
        Config(), ["model.test_flip=true", "model.with_mask=FALSE", "model.backbone.gc_stages.0=True"]
    )
    assert cfg.model.test_flip is True and cfg.model.with_mask is False and cfg.model.backbone.gc_stages[0] is True
    assert apply_overrides(cfg, ["model.test_flip=False"]).model.test_flip is False


def test_category_ids_follow_the_class_names() -> None:
    cfg = with_class_names(Config(), ("cat", "dog"), (3, 7))
    assert cfg.category_ids == (3, 7) and cfg.model.roi.num_classes == 2
    assert config_from_dict(config_to_dict(cfg)).category_ids == (3, 7)  # what a checkpoint records
    assert apply_overrides(cfg, ["class_names=('a', 'b', 'c')"]).category_ids == ()  # another count: default rule
    assert apply_overrides(cfg, ["class_names=('a', 'b')"]).category_ids == (3, 7)
    for ids, message in (((3,), "expected () or one id per class name (2), got 1"), ((3, 3), "expected distinct")):
        with pytest.raises(ConfigError, match=re.escape(f"category_ids: {message}")):
            dataclasses.replace(cfg, category_ids=ids)


def test_optional_fields_take_none() -> None:
    base = apply_overrides(Config(), ["train.amp=bf16", "train.grad_clip=10", "model.backbone.gc_ratio=0.0625"])
    assert (base.train.amp, base.train.grad_clip, base.model.backbone.gc_ratio) == ("bf16", 10.0, 0.0625)
    cfg = apply_overrides(
        base,
        [
            "train.amp=None",
            "train.grad_clip=None",
            "model.backbone.gc_ratio=None",
            "model.backbone.pretrained=None",
            "data.train_ann=None",
        ],
    )
    assert (cfg.train.amp, cfg.train.grad_clip, cfg.model.backbone.gc_ratio, cfg.model.backbone.pretrained) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.scale=96", "data.scale: expected a tuple of 2 ints, each >= 1, got 96"),
        ("data.scale=big", "data.scale: expected a tuple of 2 ints, each >= 1, got 'big'"),
        ("data.scale=None", "data.scale: expected a tuple of 2 ints, each >= 1, got None"),
        ("data.scale=(1000, 800", "data.scale: expected a tuple of 2 ints, each >= 1, got '(1000, 800'"),
        ("data.mean=(1,2)", "data.mean: expected a tuple of 3 floats, got (1, 2)"),
        ("data.scale.2=5", "data.scale.2: expected an index 0..1 into a tuple of 2 ints"),
        ("data.flip_prob=1.5", "data.flip_prob: expected a float in [0, 1], got 1.5"),
        (
            "model.backbone.gc_stages=(True, False)",
            "model.backbone.gc_stages: expected a tuple of 4 bools, got (True, False)",
        ),
        (
            "model.backbone.gc_stages.0=1",
            "model.backbone.gc_stages: expected a tuple of 4 bools, got (1, True, True, True)",
        ),
        ("model.backbone.norm=gn", "model.backbone.norm: expected one of 'bn', 'syncbn', 'frozen_bn', got 'gn'"),
        ("model.backbone.depth=42", "model.backbone.depth: expected one of 18, 34, 50, 101, 152, got 42"),
        ("model.backbone.depth=None", "model.backbone.depth: expected an int, got None"),
        ("model.backbone.gc_ratio=0", "model.backbone.gc_ratio: expected None or a float in (0, 1], got 0.0"),
        ("model.backbone.out_indices=(2, 1)", "model.backbone.out_indices: expected increasing stage indices"),
        ("model.backbone.gc_fusions=('channel_sum',)", "model.backbone.gc_fusions: expected distinct names from"),
        ("model.rpn.ratios=(0.5, -1.0)", "model.rpn.ratios: expected a non-empty tuple of floats, each > 0"),
        ("model.rpn.scales=()", "model.rpn.scales: expected a non-empty tuple of floats, each > 0, got ()"),
        ("model.rpn.nms_iou=1.5", "model.rpn.nms_iou: expected a float in [0, 1], got 1.5"),
        ("model.rpn.neg_iou=0.8", "model.rpn.neg_iou: expected at most pos_iou (0.7), got 0.8"),
        ("model.rpn.loss_bbox=l2", "model.rpn.loss_bbox: expected one of 'l1', 'smooth_l1', got 'l2'"),
        ("model.roi.stages.0.pos_iou=1.5", "model.roi.stages.0.pos_iou: expected a float in [0, 1], got 1.5"),
        (
            "model.roi.stages.1.pos_iou=0.6",
            "model.roi.stages.1: expected an index 0..0 into a tuple of RoIStageConfigs",
        ),
        ("model.roi.num_samples=0", "model.roi.num_samples: expected an int >= 1, got 0"),
        ("model.roi.mask_size=30", "model.roi.mask_size: expected 2 * mask_roi_size = 28"),
        ("model.with_mask=yes", "model.with_mask: expected a bool, got 'yes'"),
        ("train.amp=fp8", "train.amp: expected None or one of 'bf16', 'fp16', got 'fp8'"),
        ("train.milestones=(11, 8)", "train.milestones: expected increasing epochs"),
        ("train.epochs=0", "train.epochs: expected an int >= 1, got 0"),
        ("train.lr=fast", "train.lr: expected a float > 0, got 'fast'"),
        ("model.nope=1", "model.nope: ModelConfig has no setting 'nope'"),
        ("model.rpn.nms_iou.0=1", "model.rpn.nms_iou.0: model.rpn.nms_iou is a float (0.7), which has no items"),
        ("class_names=()", "class_names: expected a non-empty tuple of strings, got ()"),
        ("class_names=person", "class_names: expected a non-empty tuple of strings, got 'person'"),
        ("noequals", "override 'noequals' is not of the form key=value"),
    ],
)
def test_bad_overrides_are_one_line_naming_the_setting(override: str, message: str) -> None:
    assert _error([override]).startswith(message)


def test_a_bad_cascade_stage_is_named_by_its_index() -> None:
    cfg = gcnet.zoo.get_config(CASCADE)
    assert _error(["model.roi.stages.2.smooth_l1_beta=0"], cfg) == (
        "model.roi.stages.2.smooth_l1_beta: expected a float > 0, got 0.0"
    )


def test_settings_that_must_agree_change_together() -> None:
    assert _error(["model.backbone.depth=18"]).startswith(
        "model.neck.in_channels: expected (64, 128, 256, 512), the channels of the ResNet-18 stages"
    )
    cfg = apply_overrides(Config(), ["model.backbone.depth=18", "model.neck.in_channels=(64, 128, 256, 512)"])
    assert cfg.model.neck.in_channels == cfg.model.backbone.out_channels == (64, 128, 256, 512)
    assert _error(["model.neck.out_channels=128"]).startswith(
        "model.rpn.in_channels: expected the neck's out_channels (128), got 256"
    )
    assert _error(["model.neck.num_outs=4"]).startswith("model.rpn.strides: expected one stride per neck level (4)")


def test_direct_construction_checks_too() -> None:
    gc_stages = r"^model\.backbone\.gc_stages: expected a tuple of 4 bools, got \(True, False\)$"
    with pytest.raises(ConfigError, match=gc_stages):
        BackboneConfig(gc_stages=(True, False))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="BasicBlock"):
        BackboneConfig(depth=18, groups=32, base_width=4)
    with pytest.raises(ConfigError, match=r"^model\.roi\.stages\.\*\.pos_iou: expected a float in \[0, 1\], got 2$"):
        RoIStageConfig(pos_iou=2)
    with pytest.raises(ConfigError, match=r"^model\.roi\.stages: expected a non-empty tuple of RoIStageConfigs"):
        RoIConfig(stages=())
    with pytest.raises(ConfigError, match=r"^train\.grad_accum: expected an int >= 1, got 0$"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ConfigError, match=r"^data\.workers_per_gpu: expected an int >= 0, got -1$"):
        DataConfig(workers_per_gpu=-1)
    with pytest.raises(ConfigError, match=r"^model\.roi\.in_channels: expected the neck's out_channels"):
        ModelConfig(roi=RoIConfig(in_channels=64))
    assert RPNConfig(scales=(8,)).scales == (8,)  # an int is a float


def test_class_names_set_the_heads_class_count() -> None:
    cfg = apply_overrides(Config(), ["class_names=('cat', 'dog')"])
    assert cfg.class_names == ("cat", "dog") and cfg.model.roi.num_classes == 2
    cfg = apply_overrides(cfg, ["class_names.1=fox"])
    assert cfg.class_names == ("cat", "fox") and cfg.model.roi.num_classes == 2
    assert _error(["model.roi.num_classes=3"]) == (
        "model.roi.num_classes: expected 80, one per class name (it follows class_names: set those instead), got 3"
    )
    with pytest.raises(ConfigError, match="model.roi.num_classes: expected 2"):
        dataclasses.replace(Config(), class_names=("a", "b"))
    five = with_class_names(gcnet.zoo.get_config(CASCADE), ("a", "b", "c", "d", "e"))
    assert five.model.roi.num_classes == 5 and five.class_names == ("a", "b", "c", "d", "e")
    assert gcnet.zoo.mask_rcnn_config(class_names=("x",)).model.roi.num_classes == 1


@pytest.mark.parametrize(
    "make",
    [Config, lambda: gcnet.zoo.get_config(CASCADE), gcnet.demo.demo_config],
    ids=["default", "cascade-zoo", "demo"],
)
def test_round_trip_through_plain_data(make) -> None:
    cfg = make()
    plain = config_to_dict(cfg)
    assert json.loads(json.dumps(plain)) == plain  # plain data only: dicts, lists, numbers, strings
    back = config_from_dict(json.loads(json.dumps(plain)))
    assert back == cfg and config_diff(cfg, back) == []
    assert all(isinstance(s, RoIStageConfig) for s in back.model.roi.stages)
    assert isinstance(back.data.scale, tuple) and isinstance(back.class_names, tuple)
    assert config_from_dict(dataclasses.asdict(cfg)) == cfg  # what older checkpoints recorded


@pytest.mark.parametrize("name", sorted(gcnet.zoo.ZOO))
def test_every_zoo_config_round_trips(name: str) -> None:
    cfg = gcnet.zoo.get_config(name)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_from_dict_is_strict_but_fills_missing_settings_with_defaults() -> None:
    plain = config_to_dict(gcnet.zoo.get_config(CASCADE))
    del plain["train"], plain["model"]["rpn"]["nms_iou"], plain["model"]["roi"]["stages"][1]["loss_weight"]
    cfg = config_from_dict(plain)
    assert cfg.train == TrainConfig() and cfg.model.rpn.nms_iou == RPNConfig().nms_iou
    assert cfg.model.roi.stages[1].loss_weight == RoIStageConfig().loss_weight
    plain["model"]["roi"]["stages"][2]["bogus"] = 1
    with pytest.raises(ConfigError, match=r"^model\.roi\.stages\.2\.bogus: RoIStageConfig has no such setting"):
        config_from_dict(plain)
    with pytest.raises(ConfigError, match=r"^extra: Config has no such setting"):
        config_from_dict({"extra": 1})
    with pytest.raises(ConfigError, match=r"^model\.roi\.stages\.1\.pos_iou: expected a float in \[0, 1\], got 7"):
        config_from_dict({"model": {"roi": {"stages": [{}, {"pos_iou": 7}]}}})
    with pytest.raises(ConfigError, match=r"^model\.backbone: expected a BackboneConfig, got 3$"):
        config_from_dict({"model": {"backbone": 3}})


def test_diff_names_paths_with_both_values() -> None:
    a = Config()
    assert config_diff(a, a) == []
    b = apply_overrides(a, ["data.scale=(96, 96)", "class_names=('a', 'b')", "train.amp=bf16"])
    assert config_diff(a, b) == [
        "model.roi.num_classes: 80 -> 2",
        "data.scale: (1333, 800) -> (96, 96)",
        "train.amp: None -> 'bf16'",
        "class_names: ('person', 'bicycle', 'car', ... 80 in all) -> ('a', 'b')",
    ]
    cascade = gcnet.zoo.get_config(CASCADE)
    assert "model.roi.stages: 1 x RoIStageConfig -> 3 x RoIStageConfig" in config_diff(a, cascade)
