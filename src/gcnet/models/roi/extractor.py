"""Multi-level RoI feature extraction (mmdet ``SingleRoIExtractor`` with aligned ``RoIAlign``).

Each RoI is pooled from one FPN level chosen by its size (finest_scale 56: < 112 px -> P2,
< 224 -> P3, < 448 -> P4, else P5) with ``torchvision.ops.roi_align(aligned=True,
sampling_ratio=0)``, which is the original's RoIAlign (half-pixel shift, adaptive sampling, average).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from gcnet.layers.layout import to_nchw


def boxes_to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes [K_i, >=4] -> rois [sum K_i, 5] of (batch_idx, x1, y1, x2, y2)."""
    parts = []
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[-1] < 4:
            raise ValueError(f"boxes_to_rois: boxes of image {i} must be [K, 4] or [K, 5], got {tuple(b.shape)}")
        b = b[:, :4]
        parts.append(torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1))
    if not parts:
        raise ValueError("boxes_to_rois: need at least one image")
    return torch.cat(parts, dim=0)


def map_roi_levels(rois: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """Level of each RoI: floor(log2(sqrt(w * h) / finest_scale + 1e-6)) clamped to [0, L-1]."""
    w = rois[:, 3] - rois[:, 1]
    h = rois[:, 4] - rois[:, 2]
    scale = torch.sqrt((w * h).clamp(min=0))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def nchw_levels(feats: Sequence[Tensor], num_levels: int) -> list[Tensor]:
    """The first ``num_levels`` maps as contiguous NCHW tensors, each converted once per forward.

    torchvision's ``roi_align`` kernels run on NCHW and call ``.contiguous()`` on every call, so a
    channels-last FPN would be transposed again by each extractor (box and mask, every cascade stage),
    and by the slow generic copy (see :func:`gcnet.layers.layout.to_nchw`).
    """
    return [to_nchw(f) for f in feats[:num_levels]]


class RoIExtractor(nn.Module):
    """Pools ``output_size`` x ``output_size`` features of each RoI from its FPN level (no parameters)."""

    def __init__(
        self,
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        finest_scale: float = 56.0,
        sampling_ratio: int = 0,
    ) -> None:
        super().__init__()
        if not featmap_strides:
            raise ValueError("RoIExtractor: featmap_strides must not be empty")
        self.featmap_strides = tuple(int(s) for s in featmap_strides)
        self.output_size = int(output_size)
        self.finest_scale = float(finest_scale)
        self.sampling_ratio = int(sampling_ratio)

    @property
    def num_levels(self) -> int:
        return len(self.featmap_strides)

    def forward(self, feats: Sequence[Tensor], rois: Tensor) -> Tensor:
        """``feats``: the FPN levels (extra levels beyond the strides are ignored); ``rois`` [K, 5]."""
        if len(feats) < self.num_levels:
            raise ValueError(f"RoIExtractor: need {self.num_levels} feature levels, got {len(feats)}")
        if rois.dim() != 2 or rois.shape[-1] != 5:
            raise ValueError(f"RoIExtractor: rois must be [K, 5] (batch_idx, x1, y1, x2, y2), got {tuple(rois.shape)}")
        ref = feats[0]
        size = self.output_size
        out = ref.new_zeros((rois.shape[0], ref.shape[1], size, size))
        if rois.shape[0] == 0:
            return out
        levels = map_roi_levels(rois, self.num_levels, self.finest_scale)
        for lvl, stride in enumerate(self.featmap_strides):
            inds = (levels == lvl).nonzero().view(-1)
            if inds.numel() == 0:
                continue
            feat = feats[lvl]
            level_rois = rois[inds]
            if feat.dtype != level_rois.dtype:
                # roi_align needs one dtype; keep box coordinates in full precision.
                feat, level_rois = feat.float(), level_rois.float()
            pooled = roi_align(
                feat,
                level_rois,
                output_size=(size, size),
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
            out[inds] = pooled.to(out.dtype)
        return out
