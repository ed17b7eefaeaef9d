"""Class-aware NMS as the original does it (mmcv ``batched_nms``).

Below ``split_thr`` boxes, every group is shifted by ``idx * (boxes.max() + 1)`` and a single NMS
runs; above it, NMS runs per group (on the same shifted boxes) and the kept boxes are re-sorted by
score. The shift changes float rounding of IoUs slightly, so we replicate it for parity.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou, nms

__all__ = ["batched_nms", "box_iou"]


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_thr: float, split_thr: int = 10000) -> Tensor:
    """Indices of kept boxes (int64), sorted by descending score; NMS only within equal ``idxs``."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"batched_nms: boxes must be [N, 4], got {tuple(boxes.shape)}")
    if scores.shape != boxes.shape[:1] or idxs.shape != boxes.shape[:1]:
        raise ValueError(
            f"batched_nms: scores {tuple(scores.shape)} and idxs {tuple(idxs.shape)} must be "
            f"[N] with N = {boxes.shape[0]}"
        )
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    # torchvision's NMS kernels have no half/bf16 versions on every device: run in float32.
    boxes = boxes.float()
    scores = scores.float()
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1, dtype=boxes.dtype, device=boxes.device))
    boxes_for_nms = boxes + offsets[:, None]
    if boxes.shape[0] < split_thr:
        return nms(boxes_for_nms, scores, iou_thr)
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for group in torch.unique(idxs):
        members = (idxs == group).nonzero().view(-1)
        kept = nms(boxes_for_nms[members], scores[members], iou_thr)
        keep_mask[members[kept]] = True
    keep = keep_mask.nonzero().view(-1)
    order = scores[keep].sort(descending=True)[1]
    return keep[order]
