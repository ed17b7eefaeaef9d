"""Per-class AP from the one evaluation equals pycocotools run on each category alone; the metrics
json and the printed table; the confusion matrix on hand-made images with known counts."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gcnet.evaluation import evaluate_coco, faster_available
from gcnet.evaluation.confusion import confusion_matrix, format_confusion
from gcnet.evaluation.per_class import format_per_class, metrics_dict, per_class_ap, pr_curve, write_metrics

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 120, 160
CATS = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "emu"}, {"id": 11, "name": "gnu"}]
BACKENDS = ["pycocotools"] + (["faster"] if faster_available() else [])


def _rle(x: int, y: int, w: int, h: int) -> dict:
    m = np.zeros((H, W), np.uint8)
    m[y : y + h, x : x + w] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _dataset() -> tuple[dict, list]:
    """Four classes (gnu has no ground truth), objects of all three COCO sizes, a crowd region,
    and noisy detections: shifted, wrong class, duplicates and a few on empty background."""
    rng = np.random.default_rng(3)
    images, anns, results = [], [], []
    for i in range(12):
        images.append({"id": 100 + i, "file_name": f"{i}.png", "width": W, "height": H})
        for _ in range(int(rng.integers(1, 6))):
            w, h = (int(v) for v in rng.choice([8, 20, 40, 110], 2))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            cat = int(rng.choice([3, 7, 9], p=[0.5, 0.3, 0.2]))
            crowd = int(rng.uniform() < 0.05)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": 100 + i,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": crowd,
                    "segmentation": _rle(x, y, w, h),
                }
            )
            for _ in range(int(rng.integers(0, 3))):
                dx, dy = (int(v) for v in rng.integers(-w // 3 - 1, w // 3 + 2, 2))
                x2, y2 = min(max(x + dx, 0), W - w), min(max(y + dy, 0), H - h)
                pred = cat if rng.uniform() > 0.2 else int(rng.choice([3, 7, 9, 11]))
                results.append(
                    {
                        "image_id": 100 + i,
                        "category_id": pred,
                        "bbox": [x2, y2, w, h],
                        "score": float(rng.uniform(0.05, 1.0)),
                        "segmentation": _rle(x2, y2, w, h),
                    }
                )
        if rng.uniform() < 0.5:
            results.append(
                {
                    "image_id": 100 + i,
                    "category_id": 11,
                    "bbox": [1, 1, 10, 10],
                    "score": 0.5,
                    "segmentation": _rle(1, 1, 10, 10),
                }
            )
    return {"images": images, "annotations": anns, "categories": CATS}, results


def _pycocotools_for(gt: dict, results: list, iou_type: str, cat_id: int) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dets = copy.deepcopy(results)
        for d in dets:
            d.pop("bbox" if iou_type == "segm" else "segmentation")
        e = COCOeval(coco, coco.loadRes(dets), iou_type)
        e.params.catIds = [cat_id]
        e.evaluate()
        e.accumulate()
        e.summarize()
    return [float(v) for v in e.stats[:6]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_ap_equals_pycocotools_per_category(backend, iou_type):
    gt, results = _dataset()
    stats = evaluate_coco(gt, results, iou_types=(iou_type,), backend=backend, verbose=False)
    rows = per_class_ap(stats.details[iou_type])
    assert [r.category_id for r in rows] == [3, 7, 9, 11]
    for row in rows:
        ours = [row.AP, row.AP50, row.AP75, row.APs, row.APm, row.APl]
        assert ours == pytest.approx(_pycocotools_for(gt, results, iou_type, row.category_id), abs=1e-12), row.name
    assert rows[-1].AP == -1.0 and rows[-1].num_gt == 0  # gnu: detections but no ground truth
    counts = {c["id"]: 0 for c in CATS}
    for a in gt["annotations"]:
        counts[a["category_id"]] += 0 if a["iscrowd"] else 1
    assert [r.num_gt for r in rows] == [counts[c] for c in (3, 7, 9, 11)]
    # the mean over the classes with ground truth is COCO's overall AP
    assert np.mean([r.AP for r in rows if r.AP >= 0]) == pytest.approx(stats[iou_type][0], abs=1e-12)


def test_pr_curves_are_the_slices_coco_averages():
    gt, results = _dataset()
    stats = evaluate_coco(gt, results, iou_types=("bbox",), verbose=False)
    arrays = stats.details["bbox"]
    recall, precision = pr_curve(arrays, "0.5:0.95")
    assert recall.shape == precision.shape == (101,)
    assert np.nanmean(precision) == pytest.approx(stats["bbox"][0], abs=1e-12)
    _, at50 = pr_curve(arrays, "0.5")
    assert np.nanmean(at50) == pytest.approx(stats["bbox"][1], abs=1e-12)
    rows = per_class_ap(arrays)
    _, dog75 = pr_curve(arrays, "0.75", k=1)
    assert np.mean(dog75) == pytest.approx(rows[1].AP75, abs=1e-12)
    assert np.all(np.diff(dog75) <= 1e-12)  # COCO's interpolated precision falls with recall
    _, gnu = pr_curve(arrays, "0.5", k=3)
    assert np.isnan(gnu).all()
    with pytest.raises(ValueError, match="iou must be"):
        pr_curve(arrays, "0.6")


def test_metrics_json_and_table(tmp_path):
    gt, results = _dataset()
    stats = evaluate_coco(gt, results, verbose=False)
    path = write_metrics(stats, tmp_path / "m.json")
    data = json.loads(path.read_text())
    assert data == metrics_dict(stats)
    for iou_type in ("bbox", "segm"):
        entry = data[iou_type]
        assert entry["overall"]["AP"] == pytest.approx(stats[iou_type][0], abs=1e-6)
        assert entry["per_size"]["small"]["AP"] == pytest.approx(stats[iou_type][3], abs=1e-6)
        assert entry["per_size"]["large"]["AR"] == pytest.approx(stats[iou_type][11], abs=1e-6)
        assert [c["name"] for c in entry["per_class"]] == ["cat", "dog", "emu", "gnu"]
        assert entry["per_class"][3]["AP"] is None  # no ground truth: null, not -1
        assert entry["num_images"] == 12
    table = format_per_class(stats)
    lines = table.splitlines()
    assert "bbox AP" in lines[1] and "segm AP" in lines[1]
    dog = per_class_ap(stats.details["bbox"])[1]
    assert any(line.startswith("dog") and f"{dog.AP:5.3f}" in line for line in lines)
    assert lines[-1].startswith("gnu") and lines[-1].split()[1] == "0"


# ---- confusion matrix on hand-made images ------------------------------------------------------


def _box(x: float, y: float, w: float = 20, h: float = 20) -> list[float]:
    return [x, y, w, h]


def _hand_made() -> tuple[dict, list]:
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 5, "name": "c"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2, 3)]
    g = [
        # image 1: a found, b found as a, c missed, a found twice (duplicate), one det on nothing
        (1, 1, _box(0, 0), 0),
        (1, 2, _box(50, 0), 0),
        (1, 5, _box(100, 0), 0),
        # image 2: a crowd region of class b; a b found; a c found as b and as c (the c det wins)
        (2, 2, _box(0, 100, 80, 80), 1),
        (2, 2, _box(100, 100), 0),
        (2, 5, _box(150, 150), 0),
        # image 3: two a's, both missed (one det below the score threshold, one at IoU < 0.5)
        (3, 1, _box(0, 0), 0),
        (3, 1, _box(100, 100), 0),
    ]
    anns = [
        {"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
        for k, (im, c, b, crowd) in enumerate(g)
    ]
    r = [
        (1, 1, _box(1, 0), 0.9),
        (1, 1, _box(0, 1), 0.8),
        (1, 1, _box(50, 1), 0.7),
        (1, 2, _box(170, 170), 0.6),
        (2, 2, _box(10, 110), 0.9),  # on the crowd region of its class: ignored
        (2, 2, _box(101, 100), 0.8),
        (2, 2, _box(150, 151), 0.7),
        (2, 5, _box(151, 150), 0.4),  # c taken by its own class first
        (3, 1, _box(0, 0), 0.1),  # under score_thr
        (3, 1, _box(112, 112), 0.9),  # IoU 64/736 with the second a
        (3, 5, _box(10, 110), 0.5),  # nothing there
    ]
    results = [{"image_id": im, "category_id": c, "bbox": b, "score": s} for im, c, b, s in r]
    return {"images": images, "annotations": anns, "categories": cats}, results


def test_confusion_matrix_known_counts():
    gt, results = _hand_made()
    conf = confusion_matrix(gt, results, iou_thr=0.5, score_thr=0.3)
    #                      pred a  b  c  bg
    expected = np.array(
        [
            [1, 0, 0, 2],  # gt a: image 1 found; image 3 both missed
            [1, 1, 0, 0],  # gt b: image 1 found as a; image 2 found
            [0, 0, 1, 1],  # gt c: image 1 missed; image 2 found (by its c det)
            [2, 2, 1, 0],
        ]
    )  # background: a duplicate and a far a; b on nothing and b left
    # on c; c on nothing
    np.testing.assert_array_equal(conf.matrix, expected)
    assert conf.labels() == ("a", "b", "c", "background")
    per_image = {e.image_id: e for e in conf.images}
    assert (per_image[1].correct, per_image[1].missed, per_image[1].false) == (1, 2, 3)
    assert (per_image[2].num_gt, per_image[2].num_dets, per_image[2].missed, per_image[2].false) == (2, 3, 0, 1)
    assert (per_image[3].missed, per_image[3].false) == (2, 2)
    text = format_confusion(conf).splitlines()
    assert text[0].split()[-1] == "background" and text[1].split() == ["a", "1", "0", "0", "2"]


def test_confusion_matrix_thresholds_and_checks():
    gt, results = _hand_made()
    loose = confusion_matrix(gt, results, iou_thr=0.05, score_thr=0.0)
    # at IoU 0.05 the far a det finds the second a of image 3, and the low-score det the first
    np.testing.assert_array_equal(loose.matrix, [[3, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 2, 1, 0]])
    with pytest.raises(ValueError, match="category 4"):
        confusion_matrix(gt, [{"image_id": 1, "category_id": 4, "bbox": _box(0, 0), "score": 1.0}])
    with pytest.raises(ValueError, match="image ids"):
        confusion_matrix(gt, [{"image_id": 9, "category_id": 1, "bbox": _box(0, 0), "score": 1.0}])
    empty = confusion_matrix(gt, [])
    assert empty.matrix[:, -1].sum() == 7 and empty.matrix[:-1, :-1].sum() == 0
