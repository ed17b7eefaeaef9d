"""IoU-based assignment of boxes (anchors or RoIs) to ground truth (mmdet ``MaxIoUAssigner``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AssignResult:
    """``gt_inds``: 0 negative, -1 ignored, k >= 1 matched to gt k-1. ``labels``: gt label or -1."""

    gt_inds: Tensor
    max_overlaps: Tensor
    num_gts: int
    labels: Tensor | None = None

    @property
    def num_boxes(self) -> int:
        return int(self.gt_inds.shape[0])


def iou_matrix(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """[M, N] IoU without +1, union clamped at ``eps`` like the original's ``bbox_overlaps``."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]) * (boxes1[:, 3] - boxes1[:, 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1[:, None] + area2[None, :] - overlap).clamp(min=eps)
    return overlap / union


class MaxIoUAssigner:
    """Negatives: 0 <= max IoU < neg_iou; positives: max IoU >= pos_iou; then low-quality matches.

    Low-quality matching (the original's loop over gts in order): every gt whose best IoU is
    >= min_pos_iou takes all boxes with exactly that IoU (or only the first one when
    ``gt_max_assign_all`` is False); a later gt overrides an earlier one.
    """

    def __init__(
        self,
        pos_iou: float,
        neg_iou: float,
        min_pos_iou: float,
        match_low_quality: bool = True,
        gt_max_assign_all: bool = True,
    ) -> None:
        if neg_iou > pos_iou:
            raise ValueError(f"MaxIoUAssigner: neg_iou ({neg_iou}) must not exceed pos_iou ({pos_iou})")
        self.pos_iou = float(pos_iou)
        self.neg_iou = float(neg_iou)
        self.min_pos_iou = float(min_pos_iou)
        self.match_low_quality = match_low_quality
        self.gt_max_assign_all = gt_max_assign_all

    def assign(self, boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor | None = None) -> AssignResult:
        for name, t in (("boxes", boxes), ("gt_boxes", gt_boxes)):
            if t.dim() != 2 or t.shape[-1] != 4:
                raise ValueError(f"MaxIoUAssigner.assign: {name} must be [N, 4], got {tuple(t.shape)}")
        num_gts, num_boxes = gt_boxes.shape[0], boxes.shape[0]
        device = boxes.device
        if gt_labels is not None and gt_labels.shape != (num_gts,):
            raise ValueError(f"MaxIoUAssigner.assign: gt_labels must be [{num_gts}], got {tuple(gt_labels.shape)}")
        if num_gts == 0 or num_boxes == 0:
            gt_inds = torch.zeros(num_boxes, dtype=torch.long, device=device)
            labels = None if gt_labels is None else torch.full_like(gt_inds, -1)
            return AssignResult(gt_inds, boxes.new_zeros(num_boxes, dtype=torch.float32), num_gts, labels)

        overlaps = iou_matrix(gt_boxes.float(), boxes.float())  # [G, N]
        max_overlaps, argmax = overlaps.max(dim=0)
        gt_inds = torch.full((num_boxes,), -1, dtype=torch.long, device=device)
        gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou)] = 0
        pos = max_overlaps >= self.pos_iou
        gt_inds[pos] = argmax[pos] + 1

        if self.match_low_quality:
            gt_max, gt_argmax = overlaps.max(dim=1)
            eligible = gt_max >= self.min_pos_iou  # [G]
            if self.gt_max_assign_all:
                hits = (overlaps == gt_max[:, None]) & eligible[:, None]  # [G, N]
            else:
                hits = torch.zeros_like(overlaps, dtype=torch.bool)
                rows = torch.arange(num_gts, device=device)
                hits[rows[eligible], gt_argmax[eligible]] = True
            # The original loops over gts in order, so the highest matching gt index wins.
            ranks = torch.arange(1, num_gts + 1, device=device)[:, None] * hits
            best = ranks.max(dim=0).values
            matched = best > 0
            gt_inds[matched] = best[matched]

        labels = None
        if gt_labels is not None:
            labels = torch.full_like(gt_inds, -1)
            pos_mask = gt_inds > 0
            labels[pos_mask] = gt_labels.to(device=device, dtype=torch.long)[gt_inds[pos_mask] - 1]
        return AssignResult(gt_inds, max_overlaps, num_gts, labels)
