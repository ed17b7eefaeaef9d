"""Post-processing options: class-agnostic NMS, per-class score thresholds, detections kept.

The default path must stay the original's: it is compared with mmdet's ``multiclass_nms`` spelled
out here (a per-class loop of torchvision NMS). Each option is checked on hand-made boxes, on a
tiny detector built through ``build_detector(..., overrides=...)``, and through the CLI.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou, nms

from gcnet import build_detector
from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.config import ConfigError, RoIConfig, apply_overrides, config_to_dict, with_class_names
from gcnet.data import SHAPE_CLASSES, make_synthetic_coco
from gcnet.inference import predict
from gcnet.models.detector import TwoStageDetector
from gcnet.models.roi.inference import multiclass_nms
from tiny_models import tiny_config

NAMES = SHAPE_CLASSES[:3]  # circle, square, triangle: the tiny detector's classes here


# ---------------------------------------------------------------- multiclass_nms
def _random_case(seed: int, k: int = 150, c: int = 4, shared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Clustered boxes (so that NMS suppresses) and softmax scores [k, c + 1]."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(k, 1, 2, generator=g) * 80
    jitter = torch.randn(k, 1 if shared else c, 2, generator=g) * 2
    half = 4 + torch.rand(k, 1 if shared else c, 2, generator=g) * 10
    boxes = torch.cat([centres + jitter - half, centres + jitter + half], dim=-1)
    scores = torch.softmax(torch.randn(k, c + 1, generator=g) * 2, dim=-1)
    return boxes, scores


def _reference(boxes, scores, score_thr, iou_thr, max_num, agnostic=False):
    """mmdet's multiclass_nms by hand: pairs above the threshold, torchvision NMS within each class
    (or once over all), survivors by descending score, the first max_num."""
    c = scores.shape[1] - 1
    boxes = boxes.expand(scores.shape[0], c, 4)
    pairs = (scores[:, :c] > score_thr).nonzero()  # (roi, class), roi-major
    b, s, lab = boxes[pairs[:, 0], pairs[:, 1]], scores[pairs[:, 0], pairs[:, 1]], pairs[:, 1]
    if agnostic:
        kept = nms(b, s, iou_thr)
    else:
        survivors = []
        for cls in range(c):
            members = (lab == cls).nonzero()[:, 0]
            survivors.append(members[nms(b[members], s[members], iou_thr)])
        kept = torch.cat(survivors)
        kept = kept[s[kept].argsort(descending=True)]
    if max_num > 0:
        kept = kept[:max_num]
    return b[kept], s[kept], lab[kept]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_path_is_mmdet_multiclass_nms(seed, shared) -> None:
    boxes, scores = _random_case(seed, shared=shared)
    for max_num in (0, 100, 7):
        got = multiclass_nms(boxes, scores, 0.05, 0.5, max_num)
        assert len(got[0]) > 0
        assert _same(got, _reference(boxes, scores, 0.05, 0.5, max_num))
        # the new keywords at their defaults are the same call
        assert _same(got, multiclass_nms(boxes, scores, 0.05, 0.5, max_num, class_agnostic=False, class_score_thr=()))


@pytest.mark.parametrize("seed", [0, 1])
def test_class_agnostic_is_one_nms_over_all_pairs(seed) -> None:
    boxes, scores = _random_case(seed)
    got = multiclass_nms(boxes, scores, 0.05, 0.5, 0, class_agnostic=True)
    assert _same(got, _reference(boxes, scores, 0.05, 0.5, 0, agnostic=True))
    classwise = multiclass_nms(boxes, scores, 0.05, 0.5, 0)
    assert len(got[0]) < len(classwise[0])
    iou = box_iou(got[0], got[0]).fill_diagonal_(0)
    assert iou.max() <= 0.5  # no two survivors overlap, whatever their classes


def test_two_overlapping_boxes_of_different_classes() -> None:
    boxes = torch.tensor([[[0.0, 0, 10, 10], [0, 0, 10, 10]], [[1.0, 0, 11, 10], [1, 0, 11, 10]]])
    scores = torch.tensor([[0.7, 0.1, 0.2], [0.1, 0.6, 0.3]])  # roi0 says class 0, roi1 class 1
    b, s, lab = multiclass_nms(boxes, scores, 0.2, 0.5, 100)
    assert lab.tolist() == [0, 1] and s.tolist() == pytest.approx([0.7, 0.6])
    b, s, lab = multiclass_nms(boxes, scores, 0.2, 0.5, 100, class_agnostic=True)
    assert lab.tolist() == [0] and s.tolist() == pytest.approx([0.7])
    assert b.tolist() == [[0, 0, 10, 10]]


def test_class_score_thr_drops_exactly_the_intended_class() -> None:
    boxes, scores = _random_case(3, shared=True)
    base = multiclass_nms(boxes, scores, 0.05, 0.5, 0)
    got = multiclass_nms(boxes, scores, 0.05, 0.5, 0, class_score_thr=(0.05, 1.0, 0.05, 0.05))
    assert 1 in base[2].tolist() and 1 not in got[2].tolist()
    others = base[2] != 1
    assert _same(got, (base[0][others], base[1][others], base[2][others]))
    # score_thr is not used once class_score_thr is given; the same value for every class is score_thr
    assert _same(multiclass_nms(boxes, scores, 0.9, 0.5, 0, class_score_thr=(0.05,) * 4), base)
    assert _same(
        multiclass_nms(boxes, scores, 0.2, 0.5, 0, class_score_thr=(0.2,) * 4),
        multiclass_nms(boxes, scores, 0.2, 0.5, 0),
    )
    with pytest.raises(ValueError, match="3 class_score_thr for 4 classes"):
        multiclass_nms(boxes, scores, 0.05, 0.5, 0, class_score_thr=(0.1, 0.1, 0.1))


@pytest.mark.parametrize("seed", [0, 4])
def test_class_score_thr_before_nms_equals_filtering_after_and_top_k_fills(seed) -> None:
    boxes, scores = _random_case(seed)
    thr = (0.3, 0.05, 0.5, 0.15)
    before = multiclass_nms(boxes, scores, 0.05, 0.5, 0, class_score_thr=thr)
    after = multiclass_nms(boxes, scores, 0.05, 0.5, 0)
    passes = after[1] > torch.tensor(thr)[after[2]]
    # class-wise greedy NMS decides each pair by higher-scoring pairs of its class only
    assert _same(before, tuple(t[passes] for t in after))
    k = int((~passes).nonzero()[0]) + 3  # a top k that holds pairs below their class's threshold
    assert len(before[0]) >= k
    top = multiclass_nms(boxes, scores, 0.05, 0.5, k, class_score_thr=thr)
    assert len(top[0]) == k and _same(top, tuple(t[:k] for t in before))
    # a filter after the top k would have returned fewer: the k places fill with other detections
    assert passes[:k].sum() < k


def test_class_agnostic_with_class_score_thr_filters_before_nms() -> None:
    # roi0 (class 0, 0.8) overlaps roi1 (class 1, 0.7); class 0 needs 0.9
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10]])
    scores = torch.tensor([[0.8, 0.05, 0.15], [0.05, 0.7, 0.25]])
    b, s, lab = multiclass_nms(boxes, scores, 0.1, 0.5, 100, class_agnostic=True, class_score_thr=(0.9, 0.1))
    assert lab.tolist() == [1] and s.tolist() == pytest.approx([0.7])  # the filtered pair suppresses nothing
    assert multiclass_nms(boxes, scores, 0.1, 0.5, 100, class_agnostic=True)[2].tolist() == [0]


def test_max_det_keeps_the_top_scores() -> None:
    boxes, scores = _random_case(5)
    everything = multiclass_nms(boxes, scores, 0.05, 0.5, 0)
    assert len(everything[0]) > 10
    for k in (1, 10):
        got = multiclass_nms(boxes, scores, 0.05, 0.5, k)
        assert len(got[0]) == k and torch.equal(got[1], everything[1].sort(descending=True).values[:k])
        assert _same(got, tuple(t[:k] for t in everything))


# ---------------------------------------------------------------- config
def test_config_defaults_are_the_originals_and_bad_values_are_one_line() -> None:
    roi = RoIConfig()
    assert (roi.score_thr, roi.nms_iou, roi.max_per_img) == (0.05, 0.5, 100)
    assert (roi.class_agnostic_nms, roi.class_score_thr) == (False, ())
    with pytest.raises(ConfigError, match=r"^model\.roi\.class_score_thr: expected one threshold per class \(3\)"):
        RoIConfig(num_classes=3, class_score_thr=(0.1, 0.2))
    with pytest.raises(ConfigError, match=r"^model\.roi\.class_score_thr: expected a tuple of floats, each <= 1"):
        RoIConfig(num_classes=2, class_score_thr=(0.1, 1.5))
    with pytest.raises(ConfigError, match=r"^model\.roi\.class_agnostic_nms: expected a bool"):
        RoIConfig(class_agnostic_nms=1)  # type: ignore[arg-type]
    cfg = apply_overrides(
        tiny_config(), ["model.roi.class_score_thr=(0.5, 0.1, 0.2)", "model.roi.class_agnostic_nms=True"]
    )
    assert cfg.model.roi.class_score_thr == (0.5, 0.1, 0.2) and cfg.model.roi.class_agnostic_nms
    with pytest.raises(ConfigError, match="class_score_thr"):  # thresholds for 3 classes do not fit 2
        with_class_names(cfg, ("x", "y"))


# ---------------------------------------------------------------- end to end, tiny detector
def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    array[20:70, 30:90] = (250, 40, 40)
    return array


@functools.cache  # the tests share the baselines
def _detect(overrides: tuple[str, ...], cascade: bool = False):
    cfg = tiny_config(cascade)
    torch.manual_seed(0)  # the same random weights for every set of overrides
    model = build_detector(cfg, overrides=["model.with_mask=False", *overrides])  # boxes are what changes
    return predict(model, _image(), cfg.data)[0]


def test_end_to_end_max_det() -> None:
    everything = _detect(("model.roi.max_per_img=0",))
    three = _detect(("model.roi.max_per_img=3",))
    assert len(everything) > 10 and len(three) == 3
    assert torch.equal(three.scores, everything.scores[:3]) and torch.equal(three.boxes, everything.boxes[:3])


def test_end_to_end_class_agnostic_nms() -> None:
    classwise = _detect(("model.roi.max_per_img=0",))
    agnostic = _detect(("model.roi.max_per_img=0", "model.roi.class_agnostic_nms=True"))
    cross = box_iou(classwise.boxes, classwise.boxes) * (classwise.labels[:, None] != classwise.labels[None])
    assert cross.max() > 0.5  # the class-wise result holds overlapping boxes of different classes
    assert 0 < len(agnostic) < len(classwise)
    assert box_iou(agnostic.boxes, agnostic.boxes).fill_diagonal_(0).max() <= 0.5


@pytest.mark.parametrize("cascade", [False, True])
def test_end_to_end_class_score_thr(cascade) -> None:
    base = _detect(("model.roi.max_per_img=0",), cascade)
    got = _detect(("model.roi.max_per_img=0", "model.roi.class_score_thr=(0.05, 1.0, 0.05)"), cascade)
    assert 1 in base.labels.tolist() and 1 not in got.labels.tolist()
    others = base.labels != 1
    assert torch.equal(got.boxes, base.boxes[others]) and torch.equal(got.scores, base.scores[others])


# ---------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny box-only detector's checkpoint that records its config and classes (circle, square,
    triangle), keeping 10 detections per image."""
    cfg = apply_overrides(with_class_names(tiny_config(), NAMES), ["model.with_mask=False"])
    assert cfg.model.roi.max_per_img == 10
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.model, cfg.class_names)
    meta = {"config": config_to_dict(cfg), "class_names": list(cfg.class_names)}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", model, meta)


def _predict(checkpoint: Path, tmp_path: Path, *flags: str) -> list[dict]:
    """detections.json of `gcnet predict` on one image, every detection the model returns."""
    image = tmp_path / "img.png"
    if not image.exists():
        Image.fromarray(_image()).save(image)
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    assert main(["predict", str(checkpoint), str(image), "--out", str(out), "--score-thr", "0", *flags]) == 0
    categories = {c["id"]: c["name"] for c in json.loads((out / "images.json").read_text())["categories"]}
    records = json.loads((out / "detections.json").read_text())
    return [{**r, "name": categories[r["category_id"]]} for r in records]


def _xyxy(records: list[dict]) -> torch.Tensor:
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in records)])


def test_cli_max_det(checkpoint, tmp_path) -> None:
    default = _predict(checkpoint, tmp_path)
    everything = _predict(checkpoint, tmp_path, "--max-det", "0")
    two = _predict(checkpoint, tmp_path, "--max-det", "2")
    assert len(default) == 10 and len(everything) > 10 and len(two) == 2  # the checkpoint records 10
    top = sorted(everything, key=lambda r: -r["score"])[:2]
    assert [r["score"] for r in two] == [r["score"] for r in top]


def test_cli_class_agnostic_nms(checkpoint, tmp_path) -> None:
    classwise = _xyxy(_predict(checkpoint, tmp_path, "--max-det", "0"))
    agnostic = _xyxy(_predict(checkpoint, tmp_path, "--max-det", "0", "--class-agnostic-nms"))
    assert box_iou(classwise, classwise).fill_diagonal_(0).max() > 0.6
    assert 0 < len(agnostic) < len(classwise)
    assert box_iou(agnostic, agnostic).fill_diagonal_(0).max() <= 0.5 + 1e-3  # json rounding


def test_cli_class_score_thr(checkpoint, tmp_path, capsys) -> None:
    base = _predict(checkpoint, tmp_path, "--max-det", "0")
    got = _predict(checkpoint, tmp_path, "--max-det", "0", "--class-score-thr", "square=1")
    assert "square" in {r["name"] for r in base} and "square" not in {r["name"] for r in got}
    assert got == [r for r in base if r["name"] != "square"]  # the unnamed classes keep score_thr
    high = _predict(checkpoint, tmp_path, "--max-det", "0", "--class-score-thr", "circle=0.5", "triangle=0.5")
    assert high and all(r["score"] > 0.5 for r in high if r["name"] != "square")
    assert [r for r in high if r["name"] == "square"] == [r for r in base if r["name"] == "square"]
    capsys.readouterr()
    image = tmp_path / "img.png"
    argv = ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "x"), "--class-score-thr", "cat=0.5"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "gcnet predict: error: --class-score-thr: no class 'cat' in tiny; its classes: circle, square, triangle"
    ]
    assert not (tmp_path / "x").exists()
    assert main([*argv[:-1], "square=2"]) == 2
    assert "--class-score-thr: square=2: 2 must be >= 0 and <= 1" in capsys.readouterr().err


def test_cli_test_takes_the_flags_into_the_config(checkpoint, tmp_path, capsys) -> None:
    paths = make_synthetic_coco(tmp_path / "data", num_train=0, num_val=2, image_size=(96, 128), classes=NAMES)
    out = tmp_path / "results.json"
    argv = ["test", str(checkpoint), "--data", paths["val_ann"], "--images", paths["val_images"], "--out", str(out)]
    flags = ["--max-det", "3", "--class-agnostic-nms", "--class-score-thr", "square=1.0"]
    assert main([*argv, *flags]) == 0
    err = capsys.readouterr().err
    assert "model.roi.max_per_img: 10 -> 3" in err and "model.roi.class_agnostic_nms: False -> True" in err
    assert "model.roi.class_score_thr: () -> (0.05, 1.0, 0.05)" in err
    records = json.loads(out.read_text())
    square = json.loads(Path(paths["val_ann"]).read_text())
    square_id = next(c["id"] for c in square["categories"] if c["name"] == "square")
    per_image = [sum(r["image_id"] == i for r in records) for i in {r["image_id"] for r in records}]
    assert records and max(per_image) <= 3 and all(r["category_id"] != square_id for r in records)
