"""Fine-tuning from a model trained on other classes: what fits loads, the class layers start afresh.

Python (``load_checkpoint(finetune=True)``) and the CLI (``gcnet train --load-from``) alike; a tiny
detector trained on the 5-class shapes set is fine-tuned on a 3-class one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from gcnet.checkpoint import CheckpointError, class_dependent_keys, load_checkpoint, save_checkpoint
from gcnet.cli import main
from gcnet.config import with_class_names
from gcnet.data import make_synthetic_coco
from gcnet.models.detector import TwoStageDetector
from tiny_models import tiny_config

torch.set_num_threads(1)

FIVE = ("circle", "square", "triangle", "ellipse", "star")
THREE = ("circle", "triangle", "star")


def _model(classes: tuple[str, ...], cascade: bool = False, seed: int = 0, **model: object) -> TwoStageDetector:
    cfg = with_class_names(tiny_config(cascade), classes)
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model))  # type: ignore[arg-type]
    torch.manual_seed(seed)
    return TwoStageDetector(cfg.model, cfg.class_names)


@pytest.mark.parametrize("cascade", [False, True], ids=["mask-rcnn", "cascade"])
def test_other_classes_load_all_but_the_class_layers(tmp_path: Path, cascade: bool, capsys) -> None:
    source = _model(FIVE, cascade, seed=1)
    path = save_checkpoint(tmp_path / "five.pth", source, {"class_names": list(FIVE)})
    model = _model(THREE, cascade, seed=2)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    load_checkpoint(model, path, finetune=True)
    reinit = set(class_dependent_keys(model))
    # cascade: a classifier per stage and a mask head per stage; its regression is class-agnostic
    expected = 12 if cascade else 6
    assert len(reinit) == expected and all(k.startswith("roi_head.") for k in reinit)
    assert not any("fc_reg" in k for k in reinit) if cascade else any("fc_reg" in k for k in reinit)
    mine, theirs = model.state_dict(), source.state_dict()
    for key, value in mine.items():
        if key in reinit:
            assert not torch.equal(value, fresh[key]) or key.endswith("bias")  # drawn again, not kept
            if key.endswith("bias"):
                assert not value.any()  # the original's init: zero biases
        else:
            assert torch.equal(value, theirs[key]), key
    summary = capsys.readouterr().err.strip()
    assert summary.count("\n") == 0 and f"re-initialised {expected} (the file's 5 classes differ" in summary
    total = sum(1 for k in mine if not k.endswith("num_batches_tracked"))
    assert f"loaded {total - expected} of {total} tensors" in summary


def test_same_classes_keep_the_class_layers_and_shapes_elsewhere_are_refused(tmp_path: Path, capsys) -> None:
    source = _model(THREE, seed=1)
    path = save_checkpoint(tmp_path / "three.pth", source, {"class_names": list(THREE)})
    model = _model(THREE, seed=2)
    load_checkpoint(model, path, finetune=True)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert "class layers loaded (the file's 3 classes are this model's)" in capsys.readouterr().err
    box_only = _model(FIVE, with_mask=False)  # a Mask R-CNN file into a box-only model: mask head unused
    load_checkpoint(box_only, path, finetune=True)
    assert "in the file not used: roi_head.mask_head" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="three.pth: the config builds another network"):
        wide = with_class_names(tiny_config(fc_channels=32), THREE)
        load_checkpoint(TwoStageDetector(wide.model, wide.class_names), path, finetune=True)
    with pytest.raises(CheckpointError, match="size mismatch|shape mismatches"):
        load_checkpoint(_model(FIVE), path)  # strict loading is unchanged


def test_a_backbone_of_another_structure_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "gc.pth", _model(FIVE), {"class_names": list(FIVE)})
    cfg = with_class_names(tiny_config(), THREE)
    plain = dataclasses.replace(cfg.model.backbone, gc_ratio=None, depth=34)
    other = TwoStageDetector(dataclasses.replace(cfg.model, backbone=plain), THREE)
    with pytest.raises(CheckpointError, match="gc.pth: checkpoint has a ResNet-18 .* backbone"):
        load_checkpoint(other, path, finetune=True)


def test_cli_trains_five_classes_then_fine_tunes_on_three(tmp_path: Path, capsys) -> None:
    """Also: a work dir with checkpoints is refused without --resume / --overwrite."""
    common = dict(num_val=2, image_size=(64, 64), object_size=(12, 30), max_objects=2)
    five = make_synthetic_coco(tmp_path / "five", num_train=4, seed=0, **common)  # type: ignore[arg-type]
    three = make_synthetic_coco(tmp_path / "three", num_train=4, seed=1, classes=THREE, **common)  # type: ignore[arg-type]
    sets = [
        "--set",
        "train.epochs=1",
        "--set",
        "train.warmup_iters=1",
        "--set",
        "data.workers_per_gpu=0",
        "--set",
        "data.scale=(64, 64)",
        "--set",
        "data.images_per_gpu=2",
    ]
    first = tmp_path / "w5"
    assert (
        main(
            [
                "train",
                "gcnet-demo",
                "--data",
                five["train_ann"],
                "--images",
                five["train_images"],
                "--work-dir",
                str(first),
                *sets,
            ]
        )
        == 0
    )
    capsys.readouterr()
    argv = [
        "train",
        "gcnet-demo",
        "--data",
        three["train_ann"],
        "--images",
        three["train_images"],
        "--val-data",
        three["val_ann"],
        "--val-images",
        three["val_images"],
        "--work-dir",
        str(tmp_path / "w3"),
        "--load-from",
        str(first / "epoch_1.pth"),
        *sets,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "training on the 3 categories" in out
    assert f"fine-tuning from {first / 'epoch_1.pth'}: loaded" in out and "re-initialised 6 (the file's 5" in out
    assert "best checkpoint (bbox_AP)" in out
    ckpt = torch.load(tmp_path / "w3" / "best.pth", weights_only=True)
    assert ckpt["meta"]["class_names"] == list(THREE) and ckpt["meta"]["best"]["epoch"] == 1
    assert ckpt["meta"]["config"]["train"]["load_from"] == str(first / "epoch_1.pth")
    assert main(argv) == 2  # the same command again: refused, saying how to go on
    err = capsys.readouterr().err
    assert "holds checkpoints of an earlier run" in err and "--resume" in err and "--overwrite" in err
    assert (
        main(
            [
                "train",
                "gcnet-demo",
                "--data",
                five["train_ann"],
                "--images",
                five["train_images"],
                "--work-dir",
                str(tmp_path / "w"),
                "--load-from",
                str(tmp_path / "nope.pth"),
                *sets,
            ]
        )
        == 2
    )
    assert "nope.pth: checkpoint file not found" in capsys.readouterr().err
