"""The evaluation report (every file it references exists, offline, with and without matplotlib),
the training-log reader, the COCO drawer, `gcnet browse`, and `gcnet test --report` end to end."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from gcnet.browse import browse, dataset_stats, format_dataset_stats
from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.config import config_to_dict
from gcnet.data import make_synthetic_coco
from gcnet.evaluation import evaluate_coco
from gcnet.evaluation.per_class import metrics_dict
from gcnet.models.detector import TwoStageDetector
from gcnet.report import plots, write_report
from gcnet.report.draw import annotation_mask, draw_coco
from gcnet.report.training import add_val_points, epoch_end_steps, read_training_log
from gcnet.zoo import demo_config

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict:
    return make_synthetic_coco(tmp_path_factory.mktemp("shapes"), num_train=0, num_val=8, image_size=(96, 96), seed=2)


def _noisy_results(ann_file: str) -> list:
    """The ground truth shifted, a few dropped, some relabelled, plus one false box per image."""
    gt = json.loads(Path(ann_file).read_text())
    rng = np.random.default_rng(0)
    cats = [c["id"] for c in gt["categories"]]
    out = []
    for a in gt["annotations"]:
        if rng.uniform() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        cat = a["category_id"] if rng.uniform() > 0.2 else int(rng.choice(cats))
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "bbox": [x + 1.5, y - 1.0, w, h],
                "score": float(rng.uniform(0.3, 1.0)),
                "segmentation": a["segmentation"],
            }
        )
    for im in gt["images"]:
        out.append(
            {
                "image_id": im["id"],
                "category_id": cats[0],
                "bbox": [2.0, 2.0, 12.0, 12.0],
                "score": 0.5,
                "segmentation": out[0]["segmentation"],
            }
        )
    return out


def _train_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {
                "epoch": 1 + i // 5,
                "iter": i % 5 + 1,
                "global_step": i + 1,
                "lr": 0.01 * (i + 1),
                "loss": 2.0 / (i + 1),
                "loss_cls": 1.0 / (i + 1),
                "s1.loss_bbox": 0.5,
                "time": 0.1,
            }
        )
        for i in range(10)
    ]
    lines.insert(
        5, json.dumps({"mode": "val", "epoch": 1, "global_step": 5, "bbox_AP": 0.2, "segm_AP": 0.25, "bbox_APl": -1.0})
    )
    lines.append('{"epoch": 2, "iter"')  # a line cut short by a killed run
    (path / "log.jsonl").write_text("\n".join(lines) + "\n")
    return path


def _referenced(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', text)


def _check_page(page: Path) -> str:
    text = page.read_text(encoding="utf-8")
    refs = _referenced(page)
    assert refs, "the page references its files"
    for ref in refs:
        assert not re.match(r"^[a-z]+:", ref), f"{ref}: the page must open offline"
        assert (page.parent / ref).is_file(), f"{ref} is referenced but missing"
    assert "<script" not in text
    return text


def test_report_files_all_exist_and_hold_every_section(shapes, tmp_path):
    results = _noisy_results(shapes["val_ann"])
    stats = evaluate_coco(shapes["val_ann"], results, verbose=False)
    page = write_report(
        tmp_path / "rep",
        shapes["val_ann"],
        shapes["val_images"],
        results,
        stats,
        train_dir=_train_dir(tmp_path / "train"),
        num_images=3,
    )
    text = _check_page(page)
    for section in (
        "COCO metrics",
        "Per-class AP",
        "Precision-recall",
        "Confusion matrix",
        "Where the model fails",
        "Training curves",
    ):
        assert f"<h2>{section}</h2>" in text
    refs = _referenced(page)
    for plot in ("class_ap", "pr_all_classes", "pr_bbox_per_class", "pr_segm_per_class", "confusion", "training"):
        assert f"plots/{plot}.png" in refs
    failures = [r for r in refs if r.startswith("images/")]
    assert 1 <= len([r for r in failures if "missed" in r]) <= 3 and 1 <= len([r for r in failures if "false" in r])
    assert "matplotlib, which is not installed" not in text
    assert json.loads((page.parent / "metrics.json").read_text()) == metrics_dict(stats)
    conf = json.loads((page.parent / "confusion.json").read_text())
    matrix = np.array(conf["matrix"])
    gt = json.loads(Path(shapes["val_ann"]).read_text())
    assert matrix[:, -1].sum() + matrix[:-1, :-1].sum() == len(gt["annotations"])  # each object once
    assert conf["labels"][-1] == "background" and matrix[-1, 0] >= 8  # the false box in every image
    assert (page.parent / "overview.png").is_file()
    for name in ("circle", "square", "star"):
        assert f'<td class="name">{name}</td>' in text


def test_report_without_matplotlib_says_so_and_keeps_tables(shapes, tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    results = _noisy_results(shapes["val_ann"])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    page = write_report(tmp_path / "rep", shapes["val_ann"], shapes["val_images"], path)  # evaluated here
    text = _check_page(page)
    assert "pip install &#x27;gcnet[report]&#x27;" in text
    assert not any(r.startswith("plots/") for r in _referenced(page))
    assert "<h2>Per-class AP</h2>" in text and "background" in text  # tables stay
    assert "Training curves" not in text  # no train dir given


def test_report_with_no_detections_and_an_empty_train_dir(shapes, tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    page = write_report(tmp_path / "rep", shapes["val_ann"], shapes["val_images"], [], train_dir=empty)
    text = _check_page(page)
    assert "No training log found" in text and "Most false detections</h3>\n<p>None.</p>" in text


def test_training_log_reader(tmp_path):
    train = _train_dir(tmp_path / "t")
    log = read_training_log(train)
    assert set(log.losses) == {"loss", "loss_cls", "s1.loss_bbox"}
    assert log.losses["loss"][0] == list(range(1, 11)) and log.lr[1][0] == pytest.approx(0.01)
    assert log.val["bbox_AP"] == ([5], [0.2])
    assert epoch_end_steps(train) == {1: 5, 2: 10}
    fresh = add_val_points(read_training_log(tmp_path / "missing"), [(10, {"bbox_AP": 0.4}), (5, {"bbox_AP": 0.3})])
    assert fresh.val["bbox_AP"] == ([5, 10], [0.3, 0.4]) and not fresh.losses
    assert not read_training_log(tmp_path / "missing")
    assert list(plots._val_series(log)) == ["bbox_AP", "segm_AP"]  # headline metrics; -1 dropped


def test_draw_coco_masks_boxes_and_small_images_enlarged():
    image = np.full((40, 60, 3), 100, np.uint8)
    square = np.zeros((40, 60), np.uint8)
    square[10:20, 5:15] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    anns = [
        {"category_id": 3, "bbox": [5, 10, 10, 10], "segmentation": rle},
        {"category_id": 4, "bbox": [30, 5, 20, 20], "segmentation": [[30, 5, 50, 5, 50, 25, 30, 25]], "score": 0.9},
    ]
    assert annotation_mask(rle, 40, 60).sum() == 100
    assert annotation_mask([[30, 5, 50, 5, 50, 25, 30, 25]], 40, 60).sum() > 300
    assert annotation_mask([], 40, 60) is None
    drawn = np.asarray(draw_coco(image, anns, {3: "a", 4: "b"}, {3: 0, 4: 1}, show_scores=True))
    assert drawn.shape == (200, 300, 3)  # enlarged 5x (320 // 60) so that names stay readable
    assert (drawn[15 * 5 + 2, 10 * 5 + 2] != 100).any()  # inside the mask: tinted
    assert (drawn[35 * 5, 2 * 5] == 100).all()  # background untouched
    with pytest.raises(ValueError, match="uint8"):
        draw_coco(image.astype(np.float32), anns, {}, {})


def test_browse_statistics_problems_and_drawings(shapes, tmp_path):
    data = json.loads(Path(shapes["val_ann"]).read_text())
    data["categories"].append({"id": 99, "name": "unicorn"})
    data["annotations"].append(
        {
            "id": 10_000,
            "image_id": data["images"][0]["id"],
            "category_id": 1,
            "bbox": [90, 90, 20, 0.5],
            "area": 10.0,
            "iscrowd": 0,
            "segmentation": [],
        }
    )
    data["annotations"].append(
        {"id": 10_001, "image_id": 12345, "category_id": 1, "bbox": [0, 0, 5, 5], "area": 25.0, "iscrowd": 0}
    )
    data["images"].append({"id": 777, "file_name": "gone.png", "width": 96, "height": 96})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    stats = browse(ann, shapes["val_images"], tmp_path / "out")
    real = json.loads(Path(shapes["val_ann"]).read_text())
    assert stats.images == 9 and stats.instances == len(real["annotations"]) + 1
    assert sum(stats.sizes.values()) == stats.instances
    by_name = {c.name: c for c in stats.classes}
    assert by_name["unicorn"].instances == 0 and sum(c.instances for c in stats.classes) == stats.instances
    problems = "\n".join(stats.problems)
    for expected in (
        "1 image file(s) not found",
        "image ids not in 'images'",
        "narrower or lower than 1 pixel",
        "reaching outside their image",
        "'unicorn' (id 99) has no instances",
    ):
        assert expected in problems
    assert stats.drawn == 8 and len(list((tmp_path / "out").glob("*.png"))) == 8
    _check_page(tmp_path / "out" / "index.html")
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["instances"] == stats.instances
    text = format_dataset_stats(stats)
    assert "9 images" in text and "unicorn" in text and "problems:" in text
    clean = dataset_stats(shapes["val_ann"])
    assert clean.problems == [] and "no problems found" in format_dataset_stats(clean)


def test_cli_browse(shapes, tmp_path, capsys):
    assert (
        main(
            [
                "browse",
                shapes["val_ann"],
                "--images",
                shapes["val_images"],
                "--out",
                str(tmp_path / "b"),
                "--limit",
                "2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "8 images" in out and "drew 2 image(s)" in out
    assert (
        main(["browse", str(tmp_path / "nope.json"), "--images", shapes["val_images"], "--out", str(tmp_path / "c")])
        == 2
    )
    assert "nope.json" in capsys.readouterr().err
    assert (
        main(
            [
                "browse",
                shapes["val_ann"],
                "--images",
                shapes["val_images"],
                "--out",
                str(tmp_path / "d"),
                "--limit",
                "-1",
            ]
        )
        == 2
    )
    assert "--limit must be >= 0" in capsys.readouterr().err


def test_cli_test_prints_per_class_table_writes_metrics_and_report(shapes, tmp_path, capsys, monkeypatch):
    """A random-weight demo detector keeping every score: the per-class table after COCO's lines,
    the metrics json beside --out, the report with the training curves of the checkpoint's folder."""
    cfg = demo_config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, scale=(96, 96), workers_per_gpu=0))
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.model, cfg.class_names)
    work = _train_dir(tmp_path / "work")
    ckpt = save_checkpoint(
        work / "latest.pth", model, {"config": config_to_dict(cfg), "class_names": list(cfg.class_names)}
    )
    out = tmp_path / "preds" / "results.json"
    argv = [
        "test",
        str(ckpt),
        "--data",
        shapes["val_ann"],
        "--images",
        shapes["val_images"],
        "--set",
        "model.roi.score_thr=-1",
        "--set",
        "model.roi.max_per_img=5",
    ]
    assert main([*argv, "--out", str(out), "--report", str(tmp_path / "rep")]) == 0
    printed = capsys.readouterr().out
    assert printed.index("Average Recall") < printed.index("Per-class AP")
    assert re.search(r"^circle +\d+ \| +[\d.-]+ ", printed, re.MULTILINE)
    metrics = json.loads((tmp_path / "preds" / "results.metrics.json").read_text())
    assert [c["name"] for c in metrics["segm"]["per_class"]] == list(cfg.class_names)
    text = _check_page(tmp_path / "rep" / "index.html")
    assert "plots/training.png" in text and "gcnet test: gcnet-demo" in text
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)  # the plots were checked above
    assert main([*argv, "--report", str(tmp_path / "rep2")]) == 0  # no --out: the results go in the report
    capsys.readouterr()
    assert (tmp_path / "rep2" / "results.json").is_file() and (tmp_path / "rep2" / "results.metrics.json").is_file()
