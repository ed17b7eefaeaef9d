"""Anchor generation for the RPN, with the original's numerics.

The original (mmdet ``AnchorGenerator``) centres anchors on the grid point ``(x*s, y*s)``
(centre offset 0), keeps them in float without rounding (torchvision rounds) and orders them
location-major, then ratio.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class AnchorGenerator:
    """Multi-level anchors: base size = stride, sizes = stride * scale, ratio = h / w."""

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32, 64),
        scales: Sequence[float] = (8.0,),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
    ) -> None:
        if not strides or not scales or not ratios:
            raise ValueError(
                f"AnchorGenerator: strides, scales and ratios must be non-empty, got "
                f"strides={strides!r}, scales={scales!r}, ratios={ratios!r}"
            )
        if any(r <= 0 for r in ratios) or any(s <= 0 for s in scales) or any(s <= 0 for s in strides):
            raise ValueError("AnchorGenerator: strides, scales and ratios must all be positive")
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)

    @property
    def num_anchors_per_location(self) -> int:
        return len(self.scales) * len(self.ratios)

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    def base_anchors(self, stride: int) -> Tensor:
        """[A, 4] anchors centred at (0, 0), ratio-major then scale (mmdet ``scale_major=True``)."""
        h_ratios = torch.tensor([math.sqrt(r) for r in self.ratios], dtype=torch.float32)
        w_ratios = 1.0 / h_ratios
        scales = torch.tensor(self.scales, dtype=torch.float32)
        base = float(stride)
        ws = (base * w_ratios[:, None] * scales[None, :]).reshape(-1)
        hs = (base * h_ratios[:, None] * scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def single_level_grid_anchors(
        self,
        featmap_size: tuple[int, int],
        stride: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """[H*W*A, 4] anchors of one level; flat index = (y*W + x)*A + a."""
        feat_h, feat_w = int(featmap_size[0]), int(featmap_size[1])
        base = self.base_anchors(stride).to(device=device)
        shift_x = torch.arange(feat_w, device=device, dtype=torch.float32) * stride
        shift_y = torch.arange(feat_h, device=device, dtype=torch.float32) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4).to(dtype)

    def grid_anchors(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """One [H*W*A, 4] tensor per level."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(
                f"AnchorGenerator.grid_anchors: got {len(featmap_sizes)} feature map sizes for "
                f"{self.num_levels} strides {self.strides}"
            )
        return [
            self.single_level_grid_anchors(size, stride, device, dtype)
            for size, stride in zip(featmap_sizes, self.strides)
        ]

    def valid_flags(
        self,
        featmap_sizes: Sequence[tuple[int, int]],
        pad_shape: tuple[int, int],
        device: torch.device | str | None = None,
    ) -> list[Tensor]:
        """Per level bool [H*W*A]: the location lies inside the image's own padded extent.

        The original marks anchors of locations beyond ceil(pad / stride) as invalid, where
        ``pad_shape`` is the image padded to the size divisor (not the batch's padding).
        """
        out = []
        a = self.num_anchors_per_location
        for (feat_h, feat_w), stride in zip(featmap_sizes, self.strides):
            valid_h = min(int(math.ceil(pad_shape[0] / stride)), int(feat_h))
            valid_w = min(int(math.ceil(pad_shape[1] / stride)), int(feat_w))
            vy = torch.arange(feat_h, device=device) < valid_h
            vx = torch.arange(feat_w, device=device) < valid_w
            valid = (vy[:, None] & vx[None, :]).reshape(-1)
            out.append(valid[:, None].expand(-1, a).reshape(-1))
        return out


def anchor_inside_flags(anchors: Tensor, img_shape: tuple[int, int], allowed_border: float) -> Tensor:
    """Bool [N]: anchors within ``allowed_border`` pixels of the image; all True when it is < 0."""
    if anchors.dim() != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchor_inside_flags: anchors must be [N, 4], got {tuple(anchors.shape)}")
    if allowed_border < 0:
        return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
    img_h, img_w = img_shape[0], img_shape[1]
    b = allowed_border
    return (anchors[:, 0] >= -b) & (anchors[:, 1] >= -b) & (anchors[:, 2] < img_w + b) & (anchors[:, 3] < img_h + b)
