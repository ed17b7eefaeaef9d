"""Own data as people have it: images without annotations kept as negatives on request, box-only
sets (train, test and predict with a box-only model), and one line at load on what was dropped."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcnet.cli import main
from gcnet.config import DataConfig
from gcnet.data import CocoDetection, DatasetError, make_synthetic_coco

torch.set_num_threads(1)
CFG = DataConfig(scale=(64, 64))
SQUARE = [[4, 4, 20, 4, 20, 20, 4, 20]]


def _write(tmp_path: Path, annotations: list[dict], n_images: int = 4) -> tuple[Path, Path]:
    images = tmp_path / "img"
    images.mkdir(exist_ok=True)
    for i in range(n_images):
        Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(images / f"{i}.png")
    data = {
        "images": [{"id": i + 1, "file_name": f"{i}.png", "width": 64, "height": 48} for i in range(n_images)],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": k + 1, "category_id": 1, "iscrowd": 0, **a} for k, a in enumerate(annotations)],
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_filter_empty_and_what_was_dropped_in_one_line(tmp_path: Path) -> None:
    ann, images = _write(
        tmp_path,
        [
            {"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": SQUARE},
            {"image_id": 1, "bbox": [4, 4, 16, 16], "segmentation": [[1, 1, 5, 5], *SQUARE]},  # one part repaired
            {"image_id": 2, "bbox": [4, 4, 16, 16], "segmentation": [[1, 1, 5, 5]]},  # 2 points: no mask
            {"image_id": 2, "bbox": [4, 4, 0, 16], "segmentation": SQUARE},  # degenerate
            {"image_id": 2, "bbox": [4, 4, 16, 16], "segmentation": SQUARE, "iscrowd": 1},
        ],
    )
    default = CocoDetection(ann, images, CFG, train=True)
    assert default.image_ids == [1, 2]  # image 2 has entries (none usable): it stays, as the original's
    _, _, targets = default[0]
    assert targets is not None and len(targets.labels) == 2 and bool(targets.masks.any(dim=(1, 2)).all())
    _, _, empty = default[1]
    assert empty is not None and len(empty.labels) == 0  # the polygon of 2 points trains no empty mask
    assert default.counts.line(ann) == (
        f"{ann}: 2 training images, 2 annotations; dropped images without annotations "
        "(data.filter_empty=False keeps them): 2, degenerate boxes: 1, annotations whose polygons all have "
        "fewer than 3 points: 1, crowd annotations: 1; repaired (polygons of fewer than 3 points removed): "
        "1 annotations"
    )
    kept = CocoDetection(ann, images, dataclasses.replace(CFG, filter_empty=False), train=True)
    assert kept.image_ids == [1, 2, 3, 4]
    assert "(2 images without annotations kept as negatives)" in kept.counts.line(ann)
    _, _, negative = kept[3]
    assert negative is not None and negative.boxes.shape == (0, 4) and negative.masks.shape[0] == 0


def test_box_only_sets_load_for_box_only_training_and_for_testing(tmp_path: Path) -> None:
    ann, images = _write(tmp_path, [{"image_id": 1, "bbox": [4, 4, 16, 16]}])
    with pytest.raises(DatasetError, match=r"no 'segmentation'; .*--set model.with_mask=False"):
        CocoDetection(ann, images, CFG, train=True)
    _, _, targets = CocoDetection(ann, images, CFG, train=True, with_masks=False)[0]
    assert targets is not None and targets.masks is None and len(targets.labels) == 1
    assert len(CocoDetection(ann, images, CFG, train=False)) == 4  # testing reads no masks


def test_cli_box_only_train_test_predict(tmp_path: Path, capsys) -> None:
    paths = make_synthetic_coco(
        tmp_path / "data",
        num_train=4,
        num_val=2,
        image_size=(64, 64),
        object_size=(12, 30),
        max_objects=2,
        classes=("circle", "star"),
    )
    new_id = {1: 3, 2: 7}  # own sets' category ids often have gaps: results must keep them
    for split in ("train", "val"):  # as box-only sets come: no segmentation at all
        data = json.loads(Path(paths[f"{split}_ann"]).read_text())
        assert [(c["id"], c["name"]) for c in data["categories"]] == [(1, "circle"), (2, "star")]
        for c in data["categories"]:
            c["id"] = new_id[c["id"]]
        for a in data["annotations"]:
            del a["segmentation"]
            a["category_id"] = new_id[a["category_id"]]
        Path(paths[f"{split}_ann"]).write_text(json.dumps(data))
    work = tmp_path / "work"
    assert (
        main(
            [
                "train",
                "gcnet-demo",
                "--data",
                paths["train_ann"],
                "--images",
                paths["train_images"],
                "--val-data",
                paths["val_ann"],
                "--val-images",
                paths["val_images"],
                "--work-dir",
                str(work),
                "--set",
                "model.with_mask=False",
                "--set",
                "train.epochs=1",
                "--set",
                "train.warmup_iters=1",
                "--set",
                "data.workers_per_gpu=0",
                "--set",
                "data.scale=(64, 64)",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"{paths['train_ann']}: 4 training images" in out and "segm" not in out
    val = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if '"val"' in line]
    assert len(val) == 1 and "bbox_AP" in val[0] and not any(k.startswith("segm") for k in val[0])
    assert main(["test", str(work / "epoch_1.pth"), "--data", paths["val_ann"], "--images", paths["val_images"]]) == 0
    assert "bbox" in capsys.readouterr().out
    pred = tmp_path / "pred"
    assert main(["predict", str(work / "best.pth"), paths["val_images"], "--out", str(pred), "--score-thr", "0"]) == 0
    assert (pred / "000000.png").is_file()
    header = json.loads((pred / "images.json").read_text())
    assert header["categories"] == [{"id": 3, "name": "circle"}, {"id": 7, "name": "star"}]
    records = json.loads((pred / "detections.json").read_text())
    assert records and {r["category_id"] for r in records} <= {3, 7}
    from pycocotools.coco import COCO

    assert len(COCO(paths["val_ann"]).loadRes(str(pred / "detections.json")).getAnnIds()) == len(records)
