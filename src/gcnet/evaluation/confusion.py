"""Confusion matrix at one IoU with a background row and column, and each image's errors.

Per image, detections at or above ``score_thr`` are taken in descending score order, three times:
1. each takes the unmatched ground truth *of its own class* it overlaps most (IoU >= ``iou_thr``):
   a correct detection (the diagonal; the same greedy rule as COCO's matching at that IoU);
2. each one left takes the unmatched ground truth *of any class* it overlaps most: a confusion
   (row = true class, column = predicted class);
3. each one still left is a false detection (background row), unless it lies on a crowd region of
   its class (IoA >= ``iou_thr``: ignored, as COCO ignores it). Ground truth left unmatched is a
   miss (background column).
Rows are the ground truth, columns the prediction; the last row and column are background.
IoU is of boxes (pycocotools' ``iou``, crowd regions as intersection over detection area).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


@dataclass(frozen=True)
class ImageErrors:
    """How one image went: ground truth found with its class, missed, and detections that were wrong."""

    image_id: int
    num_gt: int
    num_dets: int  # at or above the score threshold, crowd-ignored ones left out
    correct: int
    missed: int  # ground truth without a correct detection (confused ones included)
    false: int  # detections without a matching ground truth of their class (confusions included)


@dataclass(frozen=True)
class Confusion:
    """``matrix[i, j]``: ground truth of class i detected as class j; index K is background."""

    matrix: np.ndarray  # int64 [K + 1, K + 1]
    cat_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    iou_thr: float
    score_thr: float
    images: tuple[ImageErrors, ...]

    def labels(self) -> tuple[str, ...]:
        return (*self.class_names, "background")


def _greedy(
    order: Sequence[int], iou: np.ndarray, allowed: np.ndarray, gt_free: np.ndarray, thr: float
) -> dict[int, int]:
    """Detection index -> ground-truth index for detections in ``order``, each taking the free
    ground truth of highest IoU >= ``thr`` among those ``allowed[d]`` permits."""
    matched: dict[int, int] = {}
    for d in order:
        candidates = np.where(allowed[d] & gt_free & (iou[d] >= thr), iou[d], -1.0)
        if candidates.size and candidates.max() >= 0.0:
            g = int(candidates.argmax())
            gt_free[g] = False
            matched[d] = g
    return matched


def _match_image(
    gt: list[dict[str, Any]],
    dets: list[dict[str, Any]],
    label: dict[int, int],
    iou_thr: float,
    matrix: np.ndarray,
    image_id: int,
) -> ImageErrors:
    background = matrix.shape[0] - 1
    crowd = [a for a in gt if a.get("iscrowd", 0)]
    gt = [a for a in gt if not a.get("iscrowd", 0)]
    dets = sorted(dets, key=lambda r: -float(r["score"]))
    gt_labels = np.array([label[int(a["category_id"])] for a in gt], dtype=np.int64)
    det_labels = np.array([label[int(r["category_id"])] for r in dets], dtype=np.int64)
    if gt and dets:
        iou = np.asarray(mask_utils.iou([r["bbox"] for r in dets], [a["bbox"] for a in gt], [0] * len(gt)))
    else:
        iou = np.zeros((len(dets), len(gt)))
    iou = iou.reshape(len(dets), len(gt))
    free = np.ones(len(gt), dtype=bool)
    same_class = det_labels[:, None] == gt_labels[None, :]
    correct = _greedy(range(len(dets)), iou, same_class, free, iou_thr)
    rest = [d for d in range(len(dets)) if d not in correct]
    confused = _greedy(rest, iou, np.ones_like(same_class), free, iou_thr)
    for d, g in {**correct, **confused}.items():
        matrix[gt_labels[g], det_labels[d]] += 1
    false = 0
    ignored = 0
    for d in rest:
        if d in confused:
            continue
        if _on_crowd(dets[d], det_labels[d], crowd, label, iou_thr):
            ignored += 1
            continue
        matrix[background, det_labels[d]] += 1
        false += 1
    for missed in np.flatnonzero(free):
        matrix[int(gt_labels[missed]), background] += 1
    return ImageErrors(
        image_id=image_id,
        num_gt=len(gt),
        num_dets=len(dets) - ignored,
        correct=len(correct),
        missed=len(gt) - len(correct),
        false=false + len(confused),
    )


def _on_crowd(
    det: dict[str, Any], det_label: int, crowd: list[dict[str, Any]], label: dict[int, int], thr: float
) -> bool:
    same = [a["bbox"] for a in crowd if label[int(a["category_id"])] == det_label]
    if not same:
        return False
    ioa = np.asarray(mask_utils.iou([det["bbox"]], same, [1] * len(same)))
    return bool(ioa.max() >= thr)


def confusion_matrix(
    gt: dict[str, Any],
    results: Sequence[dict[str, Any]],
    iou_thr: float = 0.5,
    score_thr: float = 0.3,
) -> Confusion:
    """The confusion matrix of COCO results (``bbox`` xywh, ``score``, ``category_id``) against a
    COCO ground-truth dict, with each image's counts (for finding the images where a model fails)."""
    categories = sorted(gt.get("categories", []), key=lambda c: int(c["id"]))
    cat_ids = tuple(int(c["id"]) for c in categories)
    label = {c: i for i, c in enumerate(cat_ids)}
    by_image_gt: dict[int, list[dict[str, Any]]] = {int(im["id"]): [] for im in gt.get("images", [])}
    for a in gt.get("annotations", []):
        by_image_gt.setdefault(int(a["image_id"]), []).append(a)
    by_image_det: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if float(r["score"]) < score_thr:
            continue
        if int(r["category_id"]) not in label:
            raise ValueError(f"confusion_matrix: result category {r['category_id']} is not in the ground truth")
        by_image_det.setdefault(int(r["image_id"]), []).append(r)
    unknown = sorted(set(by_image_det) - set(by_image_gt))
    if unknown:
        raise ValueError(f"confusion_matrix: results for image ids not in the ground truth, e.g. {unknown[:5]}")
    matrix = np.zeros((len(cat_ids) + 1, len(cat_ids) + 1), dtype=np.int64)
    images = tuple(
        _match_image(anns, by_image_det.get(image_id, []), label, iou_thr, matrix, image_id)
        for image_id, anns in sorted(by_image_gt.items())
    )
    names = tuple(str(c.get("name", c["id"])) for c in categories)
    return Confusion(matrix, cat_ids, names, iou_thr, score_thr, images)


def format_confusion(conf: Confusion) -> str:
    """The matrix as text (rows: ground truth, columns: prediction)."""
    labels = conf.labels()
    width = max(len(n) for n in labels) + 1
    cell = max(len(str(int(conf.matrix.max(initial=0)))), min(max(len(n) for n in labels), 10)) + 1
    corner = "gt \\ pred"
    head = f"{corner:<{width}}" + "".join(f"{n[: cell - 1]:>{cell}}" for n in labels)
    rows = [head] + [f"{n:<{width}}" + "".join(f"{int(v):>{cell}}" for v in row) for n, row in zip(labels, conf.matrix)]
    return "\n".join(rows)
