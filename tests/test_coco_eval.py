"""COCO evaluation: equality with pycocotools' COCOeval, empty results, result conversion."""

import contextlib
import copy
import io

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gcnet.engine import teardown_distributed
from gcnet.evaluation import detections_to_coco, evaluate_coco, faster_available, gather_results
from gcnet.masks import BoxMasks
from gcnet.structures import Detections

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 60, 80
BACKENDS = ["pycocotools"] + (["faster"] if faster_available() else [])


def _gt() -> dict:
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(6):
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": W, "height": H})
        for _ in range(int(rng.integers(1, 4))):
            w, h = (int(v) for v in rng.integers(6, 30, 2))
            x, y = int(rng.integers(0, W - w)), int(rng.integers(0, H - h))
            m = np.zeros((H, W), np.uint8)
            m[y : y + h, x : x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(rng.choice([2, 5])),
                    "bbox": [x, y, w, h],
                    "area": float(w * h),
                    "iscrowd": 0,
                    "segmentation": rle,
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}]}


def _perturbed(gt: dict) -> list:
    rng = np.random.default_rng(1)
    out = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy = (int(v) for v in rng.integers(-3, 4, 2))
        x2, y2 = min(max(x + dx, 0), W - w), min(max(y + dy, 0), H - h)
        m = np.zeros((H, W), np.uint8)
        m[y2 : y2 + h, x2 : x2 + w] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        cat = a["category_id"] if rng.uniform() > 0.2 else 7 - a["category_id"]
        out.append(
            {
                "image_id": a["image_id"],
                "category_id": cat,
                "bbox": [x2 + 0.3, y2 - 0.2, w, h],
                "score": float(rng.uniform(0.1, 1.0)),
                "segmentation": rle,
            }
        )
    return out


def _reference(gt: dict, results: list, iou_type: str) -> list:
    """pycocotools run directly, the way its README shows."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        dets = copy.deepcopy(results)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox")
        e = COCOeval(coco, coco.loadRes(dets), iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return list(e.stats)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_pycocotools_cocoeval(backend, tmp_path, capsys):
    gt, results = _gt(), None
    results = _perturbed(gt)
    snapshot = copy.deepcopy(results)
    path = tmp_path / "gt.json"
    path.write_text(__import__("json").dumps(gt))
    stats = evaluate_coco(path, results, backend=backend)
    assert results == snapshot  # the caller's dicts are not modified
    for iou_type in ("bbox", "segm"):
        ref = _reference(gt, snapshot, iou_type)
        assert len(stats[iou_type]) == 12
        assert np.allclose(stats[iou_type], ref, atol=1e-6, rtol=0)
        assert 0.0 < ref[0] < 1.0  # the perturbations make the test meaningful
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in printed
    assert stats.table in printed


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_results_give_coco_values(backend):
    gt = _gt()
    stats = evaluate_coco(gt, [], backend=backend, verbose=False)
    areas = [a["area"] for a in gt["annotations"]]
    # no detections: AP/AR 0 where ground truth exists; -1 for the large range (no GT > 96^2)
    assert max(areas) < 96**2
    for iou_type in ("bbox", "segm"):
        s = stats[iou_type]
        assert s[0] == 0.0 and s[1] == 0.0 and s[5] == -1.0 and s[8] == 0.0 and s[11] == -1.0


def test_perfect_detections_score_one():
    gt = _gt()
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
            "segmentation": a["segmentation"],
        }
        for a in gt["annotations"]
    ]
    stats = evaluate_coco(gt, results, backend="pycocotools", verbose=False)
    assert stats["bbox"][0] == pytest.approx(1.0) and stats["segm"][0] == pytest.approx(1.0)


def test_detections_to_coco_conversion():
    # a 3x3 map of ones in a 3x3 px box: each pixel centre samples one cell, so the mask is the box
    mask = torch.zeros(2, 5, 6, dtype=torch.bool)
    mask[0, 1:4, 2:5] = True
    probs = torch.stack([torch.ones(3, 3), torch.zeros(3, 3)])
    det = Detections(
        boxes=torch.tensor([[1.0, 2.0, 4.5, 6.0], [0.0, 0.0, 1.0, 1.0]]),
        scores=torch.tensor([0.9, 0.5]),
        labels=torch.tensor([1, 0]),
        masks=BoxMasks(probs, torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 1.0, 1.0]]), (5, 6)),
    )
    assert torch.equal(det.masks.full(), mask)
    res = detections_to_coco(
        [det, Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))], [42, 43], [3, 8]
    )
    assert len(res) == 2
    assert res[0]["image_id"] == 42 and res[0]["category_id"] == 8 and res[1]["category_id"] == 3
    assert res[0]["bbox"] == [1.0, 2.0, 3.5, 4.0] and res[0]["score"] == pytest.approx(0.9)
    assert isinstance(res[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode({"size": [5, 6], "counts": res[0]["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask[0].numpy())
    with pytest.raises(ValueError, match="no category id"):
        detections_to_coco([det], [1], [3])
    assert gather_results(res) == res  # no process group: unchanged


def _gather_worker(rank: int, init_file: str, out_file: str) -> None:
    import json

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    merged = gather_results([{"image_id": rank, "k": i} for i in range(rank + 1)])
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(merged, f)
    teardown_distributed(barrier=True)  # gloo on torch < 2.8 can deadlock without it


@pytest.mark.slow
def test_gather_results_across_two_processes(tmp_path):
    import json

    import torch.multiprocessing as mp

    out = tmp_path / "merged.json"
    mp.spawn(_gather_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    assert json.loads(out.read_text()) == [{"image_id": 0, "k": 0}, {"image_id": 1, "k": 0}, {"image_id": 1, "k": 1}]
