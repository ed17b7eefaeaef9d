"""The user-facing entries: predict() on paths / PIL / arrays, batching, and the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.errors import UserError
from gcnet.inference import expand_image_paths, predict
from gcnet.models.detector import build_model
from gcnet.zoo import demo_config


@pytest.fixture(scope="module")
def demo_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = demo_config()
    model = build_model(cfg.model, cfg.class_names)
    with torch.no_grad():  # make the box classifier confident enough that detections exist
        model.roi_head.bbox_head.fc_cls.bias[:-1] += 3.0
    return model.eval()


def _images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(((120, 160), (160, 150), (120, 160))):
        array = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        array[20:70, 30:90] = (250, 40, 40)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def test_predict_accepts_paths_pil_and_arrays_and_batches_like_singles(demo_model, tmp_path) -> None:
    cfg = demo_config()
    paths = _images(tmp_path)
    singles = [predict(demo_model, p, cfg.data)[0] for p in paths]
    batched = predict(demo_model, paths, cfg.data, batch_size=3)
    assert len(batched) == 3
    assert sum(len(d) for d in singles) > 0
    for one, many, path in zip(singles, batched, paths):
        h, w = Image.open(path).size[::-1]
        assert one.masks is not None and one.masks.shape[1:] == (h, w)
        assert one.masks.full().dtype == torch.bool
        torch.testing.assert_close(one.boxes, many.boxes, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(one.scores, many.scores, rtol=1e-4, atol=1e-5)
        assert torch.equal(one.labels, many.labels)
    many_windows = predict(demo_model, paths * 4, cfg.data, batch_size=1)  # 12 images: two windows of 8
    assert [len(d) for d in many_windows] == [len(d) for d in singles] * 4
    assert torch.equal(many_windows[10].boxes, singles[1].boxes)
    from_pil = predict(demo_model, Image.open(paths[0]), cfg.data)[0]
    from_array = predict(demo_model, np.asarray(Image.open(paths[0])), cfg.data)[0]
    assert torch.equal(from_pil.boxes, singles[0].boxes) and torch.equal(from_array.boxes, singles[0].boxes)
    assert set(singles[0].label_names) <= set(cfg.class_names)


def test_predict_rejects_bad_arrays(demo_model) -> None:
    with pytest.raises(ValueError, match="uint8"):
        predict(demo_model, np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="unsupported"):
        predict(demo_model, 3)  # type: ignore[arg-type]


def test_cli_predict_writes_pngs_and_json(demo_model, tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "demo.pth", demo_model)
    paths = _images(tmp_path)[:2]
    out = tmp_path / "out"
    argv = [
        "predict",
        "gcnet-demo",
        "--checkpoint",
        str(ckpt),
        *map(str, paths),
        "--out",
        str(out),
        "--score-thr",
        "0.0",
    ]
    assert main(argv) == 0
    for path in paths:
        image = Image.open(out / f"{path.stem}.png")
        assert image.size == Image.open(path).size
    records = json.loads((out / "detections.json").read_text())  # COCO results format
    assert records and set(records[0]) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    header = json.loads((out / "images.json").read_text())
    assert [(im["id"], im["file_name"]) for im in header["images"]] == [(1, str(paths[0])), (2, str(paths[1]))]
    assert {r["category_id"] for r in records} <= {c["id"] for c in header["categories"]}
    fast_out = tmp_path / "fast"
    assert main([*argv[:-4], "--out", str(fast_out), "--score-thr", "0.0", "--fast"]) == 0
    fast = json.loads((fast_out / "detections.json").read_text())
    assert len(fast) == len(records)
    for a, b in zip(sorted(records, key=lambda r: -r["score"]), sorted(fast, key=lambda r: -r["score"])):
        assert a["category_id"] == b["category_id"]
        assert max(abs(x - y) for x, y in zip(a["bbox"], b["bbox"])) < 1e-2


def test_cli_predict_takes_directories_and_keeps_same_named_images_apart(demo_model, tmp_path) -> None:
    ckpt = save_checkpoint(tmp_path / "demo.pth", demo_model)
    paths = _images(tmp_path)[:2]
    for sub, path in zip(("a", "b"), paths):  # two images both called "same.png"
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "same.png").write_bytes(path.read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "gcnet-demo",
                "--checkpoint",
                str(ckpt),
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["same_0.png", "same_1.png"]
    header = json.loads((out / "images.json").read_text())
    assert [im["file_name"] for im in header["images"]] == [
        str(tmp_path / "a" / "same.png"),
        str(tmp_path / "b" / "same.png"),
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: directory has no image files"):
        expand_image_paths([tmp_path / "empty"])


def test_cli_predict_on_an_undecodable_image_is_a_message(demo_model, tmp_path, capsys) -> None:
    ckpt = save_checkpoint(tmp_path / "demo.pth", demo_model)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    argv = ["predict", "gcnet-demo", "--checkpoint", str(ckpt), str(tmp_path / "broken.jpg"), "--out", str(tmp_path)]
    assert main(argv) == 2  # nothing could be done: an error, after the warning naming the file
    err = capsys.readouterr().err
    assert "broken.jpg: cannot decode image" in err and "Traceback" not in err


def test_cli_errors_are_messages_not_traces(tmp_path, capsys) -> None:
    assert main(["predict", "no-such-config", "--checkpoint", "x", "a.png", "--out", str(tmp_path)]) == 2
    assert "no-such-config" in capsys.readouterr().err
    assert main(["predict", "gcnet-demo", "--checkpoint", "x", str(tmp_path / "a.png"), "--out", str(tmp_path)]) == 2
    assert "a.png: no such image file or directory" in capsys.readouterr().err  # checked before the model loads
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    assert (
        main(
            [
                "predict",
                "gcnet-demo",
                "--checkpoint",
                str(tmp_path / "missing.pth"),
                str(tmp_path / "a.png"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "missing.pth" in capsys.readouterr().err
    assert main(["train", "gcnet-demo", "--set", "train.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_zoo_lists_the_19_models(capsys) -> None:
    assert main(["zoo"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 20 and lines[2].startswith("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco")


def test_cli_train_then_test_on_the_synthetic_set(tmp_path, capsys) -> None:
    from gcnet.data import make_synthetic_coco

    paths = make_synthetic_coco(tmp_path / "data", num_train=4, num_val=2, image_size=(96, 96), seed=1)
    work = tmp_path / "work"
    overrides = [
        "--set",
        "train.epochs=1",
        "--set",
        "train.warmup_iters=2",
        "--set",
        "data.workers_per_gpu=0",
        "--set",
        "data.scale=(96, 96)",
        "--set",
        "data.images_per_gpu=2",
        "--set",
        "class_names=('x', 'y')",
    ]  # the data's 5 categories replace these
    assert (
        main(
            [
                "train",
                "gcnet-demo",
                "--data",
                paths["train_ann"],
                "--images",
                paths["train_images"],
                "--work-dir",
                str(work),
                *overrides,
            ]
        )
        == 0
    )
    assert (work / "epoch_1.pth").is_file() and (work / "log.jsonl").is_file()
    assert "training on the 5 categories" in capsys.readouterr().out
    out = tmp_path / "results.json"
    # the checkpoint records the (96, 96) scale and the 5 classes it was trained with: no --set needed
    assert (
        main(
            [
                "test",
                "gcnet-demo",
                "--checkpoint",
                str(work / "epoch_1.pth"),
                "--data",
                paths["val_ann"],
                "--images",
                paths["val_images"],
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert "records its own config" in captured.err and "data.scale: (160, 160) -> (96, 96)" in captured.err
    assert "Average Precision" in printed and "segm" in printed
    assert isinstance(json.loads(out.read_text()), list)
    assert (
        main(
            [
                "test",
                "gcnet-demo",
                "--checkpoint",
                str(work / "epoch_1.pth"),
                "--data",
                str(tmp_path / "nope.json"),
                "--images",
                paths["val_images"],
            ]
        )
        == 2
    )
    assert "nope.json" in capsys.readouterr().err


def test_cli_bench_times_real_images_from_a_directory(tmp_path, capsys) -> None:
    paths = _images(tmp_path)
    argv = ["bench", "gcnet-demo", "--iters", "2", "--images", str(paths[0].parent)]
    assert main(argv) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and rows[2].startswith("| gcnet-demo | inference")  # header, rule, one row
    assert main([*argv, "--peer"]) == 2
    assert "--peer and --train use the synthetic size" in capsys.readouterr().err
