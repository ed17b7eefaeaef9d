"""Per-class AP, PR curves and a json of every metric, sliced from the one COCO evaluation.

COCO's ``summarize()`` averages ``precision[T, R, K, A, M]`` over thresholds, recall points and
categories; taking one category ``k`` before averaging gives that category's AP, the number
pycocotools prints when run with ``params.catIds = [k]`` (checked by ``tests/test_per_class.py``).
Entries of -1 mark "no ground truth" and are left out of every mean, as COCO does; a class with no
ground truth at all has AP -1 here and ``null`` in the json.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gcnet.evaluation.coco_eval import EvalArrays

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
SIZES: tuple[str, ...] = ("small", "medium", "large")
IOU_CHOICES: tuple[str, ...] = ("0.5", "0.75", "0.5:0.95")  # the PR curves drawn for each class


@dataclass(frozen=True)
class ClassAP:
    """One category's AP numbers for one iou type (-1: no ground truth of this class in that range)."""

    category_id: int
    name: str
    num_gt: int
    AP: float
    AP50: float
    AP75: float
    APs: float
    APm: float
    APl: float


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _iou_index(arrays: EvalArrays, iou: float) -> int:
    found = np.flatnonzero(np.isclose(arrays.iou_thrs, iou))
    if not found.size:
        raise ValueError(f"per-class AP: IoU {iou} is not one of the evaluated thresholds {arrays.iou_thrs.tolist()}")
    return int(found[0])


def _area_index(arrays: EvalArrays, area: str) -> int:
    return arrays.area_labels.index(area)


def class_precision(arrays: EvalArrays, k: int, iou: float | None = None, area: str = "all") -> np.ndarray:
    """Precision of category index ``k`` at maxDets 100: ``[T, R]`` for all IoUs or ``[R]`` at one."""
    p = arrays.precision[:, :, k, _area_index(arrays, area), -1]
    return p if iou is None else p[_iou_index(arrays, iou)]


def per_class_ap(arrays: EvalArrays) -> list[ClassAP]:
    """AP, AP50, AP75 and AP by object size of every evaluated category, in category-id order."""
    rows = []
    for k, (cat_id, name) in enumerate(zip(arrays.cat_ids, arrays.cat_names)):
        all_ious = class_precision(arrays, k)
        rows.append(
            ClassAP(
                category_id=cat_id,
                name=name,
                num_gt=arrays.num_gt[k],
                AP=_mean_valid(all_ious),
                AP50=_mean_valid(all_ious[_iou_index(arrays, 0.5)]),
                AP75=_mean_valid(all_ious[_iou_index(arrays, 0.75)]),
                APs=_mean_valid(class_precision(arrays, k, area="small")),
                APm=_mean_valid(class_precision(arrays, k, area="medium")),
                APl=_mean_valid(class_precision(arrays, k, area="large")),
            )
        )
    return rows


def pr_curve(arrays: EvalArrays, iou: str, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall points, precision) at IoU ``"0.5"``, ``"0.75"`` or ``"0.5:0.95"`` (mean over IoUs) for
    category index ``k``, or averaged over the categories that have ground truth when ``k`` is None.

    Precision is COCO's interpolated one (monotone, 0 beyond the highest recall reached); points
    with no ground truth are NaN so plots leave them out."""
    area = _area_index(arrays, "all")
    p = arrays.precision[:, :, :, area, -1] if k is None else arrays.precision[:, :, k : k + 1, area, -1]
    if iou != "0.5:0.95":
        if iou not in IOU_CHOICES:
            raise ValueError(f"pr_curve: iou must be one of {IOU_CHOICES}, got {iou!r}")
        p = p[_iou_index(arrays, float(iou)) : _iou_index(arrays, float(iou)) + 1]
    masked = np.where(p > -1, p, np.nan)  # [t, R, k]
    with warnings.catch_warnings():  # an all-NaN slice (no ground truth) warns; NaN is the answer
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = np.nanmean(masked, axis=(0, 2))
    return arrays.rec_thrs, curve


def _num(value: float) -> float | None:
    """-1 (COCO's "undefined") and NaN become None: json null, a dash in tables."""
    return None if value < 0 or math.isnan(value) else round(float(value), 6)


def metrics_dict(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Every metric of a :class:`~gcnet.evaluation.CocoStats`: overall (the 12 stats by name), per
    size (AP and AR of small / medium / large objects) and per class, for each iou type."""
    out: dict[str, Any] = {}
    details: dict[str, EvalArrays] = getattr(stats, "details", {})
    for iou_type, values in stats.items():
        named = {n: _num(v) for n, v in zip(STAT_NAMES, values)}
        entry: dict[str, Any] = {
            "overall": named,
            "per_size": {size: {"AP": named[f"AP{size[0]}"], "AR": named[f"AR{size[0]}"]} for size in SIZES},
        }
        if iou_type in details:
            arrays = details[iou_type]
            entry["num_images"] = arrays.num_images
            entry["per_class"] = [
                {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(row).items()}
                for row in per_class_ap(arrays)
            ]
        out[iou_type] = entry
    backend = getattr(stats, "backend", "")
    if backend:
        out["evaluator"] = backend
    return out


def write_metrics(stats: Mapping[str, Any], path: str | Path) -> Path:
    """Write :func:`metrics_dict` as json; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics_dict(stats), indent=2))
    return path


def _cell(value: float) -> str:
    return "    -" if value < 0 else f"{value:5.3f}"


def format_per_class(stats: Mapping[str, Any]) -> str:
    """The per-class table printed after COCO's lines: one row per class, AP / AP50 / AP75 of each
    iou type and the number of ground-truth instances."""
    details: dict[str, EvalArrays] = getattr(stats, "details", {})
    iou_types = [t for t in stats if t in details]
    if not iou_types:
        return ""
    tables = {t: per_class_ap(details[t]) for t in iou_types}
    first = tables[iou_types[0]]
    width = max([len("class")] + [len(r.name) for r in first])
    head = f"{'class':<{width}} {'gt':>6}"
    for t in iou_types:
        head += f" | {t + ' AP':>9} {'AP50':>5} {'AP75':>5}"
    lines = ["Per-class AP (maxDets=100, area=all)", head, "-" * len(head)]
    for i, row in enumerate(first):
        line = f"{row.name:<{width}} {row.num_gt:>6}"
        for t in iou_types:
            r = tables[t][i]
            line += f" | {_cell(r.AP):>9} {_cell(r.AP50)} {_cell(r.AP75)}"
        lines.append(line)
    return "\n".join(lines)
