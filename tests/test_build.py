"""The one builder: zoo names, gcnet-demo, Configs and our checkpoint files, in Python and the CLI alike."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gcnet
from gcnet.build import build, locate_checkpoint
from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.config import config_to_dict, with_class_names
from gcnet.errors import UserError
from gcnet.zoo import DEMO_NAME, ZOO, demo_config

FIVE = ("ant", "bee", "cat", "dog", "eel")


def _our_checkpoint(path: Path, cfg, seed: int = 0) -> Path:
    """A checkpoint as the trainer writes it: weights, class names and the whole config."""
    torch.manual_seed(seed)
    model = gcnet.build_model(cfg.model, cfg.class_names)
    meta = {"epoch": 1, "class_names": list(cfg.class_names), "config": config_to_dict(cfg)}
    return save_checkpoint(path, model, meta=meta)


@pytest.fixture()
def trained_96(tmp_path: Path) -> tuple[Path, object]:
    """A 5-class demo-sized model "trained" at (96, 96)."""
    cfg = with_class_names(demo_config(), FIVE)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, scale=(96, 96)))
    return _our_checkpoint(tmp_path / "own_5class.pth", cfg), cfg


def test_a_checkpoint_file_is_a_source_and_restores_config_and_classes(trained_96) -> None:
    path, cfg = trained_96
    built = build(path)
    assert built.config == cfg and built.checkpoint == path
    assert built.model.class_names == FIVE and built.model.roi_head.bbox_head.fc_cls.out_features == 6
    assert not built.model.training


def test_a_named_config_with_our_checkpoint_uses_what_the_checkpoint_records(trained_96, capsys) -> None:
    path, cfg = trained_96
    model = gcnet.build_detector(demo_config(), checkpoint=str(path))  # the demo config has other classes
    assert model.class_names == FIVE
    built = build(DEMO_NAME, path)
    assert built.config.data.scale == (96, 96)  # the scale it was trained at, not the default
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("records its own config" in line and "data.scale" in line for line in err)


def test_explicit_overrides_win_and_are_said(trained_96, capsys) -> None:
    path, _ = trained_96
    built = build(path, overrides=["data.scale=(64, 64)", "model.roi.score_thr=0.3"])
    assert built.config.data.scale == (64, 64) and built.config.model.roi.score_thr == 0.3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.scale" in err[0] and "model.roi.score_thr" in err[0]


def test_same_config_says_nothing(trained_96, capsys) -> None:
    path, cfg = trained_96
    build(cfg, path)
    assert capsys.readouterr().err == ""


def test_names_the_builder_refuses(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="did you mean"):
        build("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_cocoo")
    with pytest.raises(UserError, match="no published file"):
        locate_checkpoint("zoo", DEMO_NAME)
    with pytest.raises(UserError, match="missing.pth: checkpoint file not found"):
        build(DEMO_NAME, tmp_path / "missing.pth")


def _published_file(cache: Path, name: str) -> Path:
    """What download.openmmlab.com serves for ``name``, as the cache would hold it: the original's
    layout (``state_dict`` + ``meta`` with ``CLASSES`` and the config as Python text, no config dict)."""
    entry = ZOO[name]
    torch.manual_seed(0)
    model = gcnet.build_model(entry.config.model, entry.config.class_names)
    path = cache / entry.url.rsplit("/", 1)[-1]
    meta = {"CLASSES": list(entry.config.class_names), "config": "model = dict(type='MaskRCNN', ...)"}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)
    return path


ZOO_NAME = "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco"


@pytest.mark.slow
def test_checkpoint_zoo_means_the_published_file_in_python_and_the_cli(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("GCNET_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    published = _published_file(tmp_path / "cache", ZOO_NAME)  # cached: no network needed
    built = build(ZOO_NAME, "zoo")
    assert built.checkpoint == published and built.config == ZOO[ZOO_NAME].config
    assert build(ZOO_NAME, ZOO_NAME).checkpoint == published  # a zoo name as the checkpoint
    with pytest.raises(UserError, match="records no config"):
        build(published)  # the original's files need their zoo config named
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    argv = ["predict", ZOO_NAME, "--checkpoint", "zoo", str(image), "--out", str(out), "--set", "data.scale=(64,64)"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "detections.json").is_file()


def test_cli_predict_and_test_take_a_checkpoint_as_the_source(trained_96, tmp_path, capsys) -> None:
    path, _ = trained_96
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(path), str(image), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "detections.json").read_text()) is not None
    assert main(["predict", DEMO_NAME, str(image), "--out", str(tmp_path / "o2")]) == 2
    assert "--checkpoint" in capsys.readouterr().err  # a config alone has no trained weights
