"""COCO bbox / segm evaluation with a real COCO evaluator (the original uses pycocotools COCOeval).

``faster-coco-eval`` (C++ COCOeval, same numbers) is used when installed because it measured
several times faster (see benchmarks/RESULTS.md); pycocotools otherwise. As the original, the
'bbox' field is dropped from segm results so COCO uses mask areas for the S/M/L split. The 12
standard stats use maxDets (1, 10, 100); the original sets (100, 300, 1000), which gives the
same AP when at most 100 detections per image are kept (its max_per_img), but labels its AR
stats @100/@300/@1000.

The arrays ``accumulate()`` computed (precision per IoU, recall threshold, category, area range and
maxDets) are kept in :attr:`CocoStats.details`, so per-class AP and PR curves are slices of this
one evaluation (:mod:`gcnet.evaluation.per_class`), not a second run.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Backend = Literal["auto", "faster", "pycocotools"]

_STAT_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("Average Precision", "(AP)", "0.50:0.95", "all"),
    ("Average Precision", "(AP)", "0.50", "all"),
    ("Average Precision", "(AP)", "0.75", "all"),
    ("Average Precision", "(AP)", "0.50:0.95", "small"),
    ("Average Precision", "(AP)", "0.50:0.95", "medium"),
    ("Average Precision", "(AP)", "0.50:0.95", "large"),
    ("Average Recall", "(AR)", "0.50:0.95", "all"),
    ("Average Recall", "(AR)", "0.50:0.95", "all"),
    ("Average Recall", "(AR)", "0.50:0.95", "all"),
    ("Average Recall", "(AR)", "0.50:0.95", "small"),
    ("Average Recall", "(AR)", "0.50:0.95", "medium"),
    ("Average Recall", "(AR)", "0.50:0.95", "large"),
)
_MAX_DETS = (100, 100, 100, 100, 100, 100, 1, 10, 100, 100, 100, 100)


@dataclass(frozen=True)
class EvalArrays:
    """What COCOeval's ``accumulate()`` computed for one iou type, with the names to read it by."""

    precision: np.ndarray  # [T iou thresholds, R recall thresholds, K categories, A areas, M maxDets]; -1 = no gt
    recall: np.ndarray  # [T, K, A, M]; -1 = no gt
    iou_thrs: np.ndarray  # [T]
    rec_thrs: np.ndarray  # [R]
    cat_ids: tuple[int, ...]  # [K], ascending
    cat_names: tuple[str, ...]  # [K]
    area_labels: tuple[str, ...]  # [A]: all, small, medium, large
    max_dets: tuple[int, ...]  # [M]: 1, 10, 100
    num_gt: tuple[int, ...]  # [K] non-crowd ground-truth instances per category
    image_ids: tuple[int, ...]  # the images evaluated

    @property
    def num_images(self) -> int:
        return len(self.image_ids)


class CocoStats(dict):
    """``{iou_type: [12 COCO stats]}``; ``.table`` holds the printed summary, ``.details`` the
    :class:`EvalArrays` of each iou type, ``.backend`` the evaluator that ran."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.table = ""
        self.backend = ""
        self.details: dict[str, EvalArrays] = {}


def faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in ("auto", "faster", "pycocotools"):
        raise ValueError(f"evaluate_coco: backend must be 'auto', 'faster' or 'pycocotools', got {backend!r}")
    if backend == "auto":
        return "faster" if faster_available() else "pycocotools"
    if backend == "faster" and not faster_available():
        raise ImportError("evaluate_coco: backend='faster' needs the faster-coco-eval package")
    return backend


def _classes(backend: str) -> tuple[Any, Any]:
    if backend == "faster":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    return COCO, COCOeval


def _load_gt(gt: Any, coco_cls: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(gt, (str, os.PathLike)):
            if not os.path.isfile(gt):
                raise FileNotFoundError(f"evaluate_coco: annotation file {gt} not found")
            return coco_cls(str(gt))
        dataset = gt if isinstance(gt, dict) else getattr(gt, "dataset", None)
        if not isinstance(dataset, dict) or "images" not in dataset:
            raise TypeError("evaluate_coco: ground truth must be a json path, a COCO object or a COCO dict")
        coco = coco_cls()
        coco.dataset = copy.deepcopy(dataset)
        coco.createIndex()
        return coco


def _empty_results(gt: Any, coco_cls: Any) -> Any:
    """A result set with no detections (pycocotools' loadRes cannot take an empty list)."""
    res = coco_cls()
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "categories": copy.deepcopy(gt.dataset.get("categories", [])),
        "annotations": [],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res


def _results_for(results: Sequence[dict[str, Any]], iou_type: str) -> list[dict[str, Any]]:
    out = []
    for r in results:
        item = dict(r)  # COCO's loadRes writes into the dicts: never hand it the caller's
        if iou_type == "segm":
            if "segmentation" not in item:
                raise ValueError("evaluate_coco: segm evaluation needs 'segmentation' in every result")
            item.pop("bbox", None)
        else:
            item.pop("segmentation", None)
        out.append(item)
    return out


def _arrays(evaluator: Any, gt: Any) -> EvalArrays:
    """Copy the accumulated arrays out of an evaluator (both backends use pycocotools' layout)."""
    params = evaluator.params
    cat_ids = tuple(int(c) for c in params.catIds)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.dataset.get("categories", [])}
    counted = Counter(int(a["category_id"]) for a in gt.dataset.get("annotations", []) if not a.get("iscrowd", 0))
    return EvalArrays(
        precision=np.array(evaluator.eval["precision"], dtype=np.float64),
        recall=np.array(evaluator.eval["recall"], dtype=np.float64),
        iou_thrs=np.array(params.iouThrs, dtype=np.float64),
        rec_thrs=np.array(params.recThrs, dtype=np.float64),
        cat_ids=cat_ids,
        cat_names=tuple(names.get(c, str(c)) for c in cat_ids),
        area_labels=tuple(str(a) for a in params.areaRngLbl),
        max_dets=tuple(int(m) for m in params.maxDets),
        num_gt=tuple(counted.get(c, 0) for c in cat_ids),
        image_ids=tuple(int(i) for i in params.imgIds),
    )


def format_stats(iou_type: str, stats: Sequence[float]) -> str:
    """The 12 stats in pycocotools' ``summarize()`` layout."""
    lines = [f"Evaluate annotation type *{iou_type}*"]
    for (title, abbr, iou, area), max_det, value in zip(_STAT_ROWS, _MAX_DETS, stats):
        lines.append(f" {title:<18} {abbr} @[ IoU={iou:<9} | area={area:>6s} | maxDets={max_det:>3d} ] = {value:0.3f}")
    return "\n".join(lines)


def evaluate_coco(
    ann_file_or_coco: str | os.PathLike[str] | dict[str, Any] | Any,
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = ("bbox", "segm"),
    backend: Backend = "auto",
    verbose: bool = True,
) -> CocoStats:
    """Run COCOeval per iou type; returns ``{iou_type: 12 stats}`` (``.table`` holds the summary,
    ``.details`` the accumulated arrays).

    Empty results give COCO's own answer (AP 0 where there is ground truth, -1 where none),
    not an error.
    """
    chosen = _resolve_backend(backend)
    coco_cls, eval_cls = _classes(chosen)
    gt = _load_gt(ann_file_or_coco, coco_cls)
    out = CocoStats()
    out.backend = chosen
    tables = []
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"evaluate_coco: iou type must be 'bbox' or 'segm', got {iou_type!r}")
        dets = _results_for(results, iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes(dets) if dets else _empty_results(gt, coco_cls)
            evaluator = eval_cls(gt, dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stats = [float(v) for v in list(evaluator.stats)[:12]]
        out[iou_type] = stats
        out.details[iou_type] = _arrays(evaluator, gt)
        tables.append(format_stats(iou_type, stats))
    out.table = "\n".join(tables)
    if verbose:
        print(out.table)
    return out
