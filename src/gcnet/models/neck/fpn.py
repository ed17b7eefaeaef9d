"""Feature Pyramid Network as the original configures it for Mask R-CNN (mmdet ``FPN``).

1x1 lateral convs, nearest top-down upsampling to the exact size of the level below, 3x3 output
convs, and extra levels by max-pool(kernel 1, stride 2) of the last output (no extra convs).
Keys: ``lateral_convs.{i}.conv.*`` and ``fpn_convs.{i}.conv.*`` (the original's ConvModules).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.models.config import FPNConfig


class ConvUnit(nn.Module):
    """A bare conv under the name ``conv`` (the original's ConvModule without norm or activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """c2..c5 -> p2..p6 (``num_outs`` levels, each ``out_channels`` wide)."""

    def __init__(self, cfg: FPNConfig) -> None:
        super().__init__()  # FPNConfig checked in_channels and num_outs when it was made
        self.in_channels = tuple(cfg.in_channels)
        self.out_channels = cfg.out_channels
        self.num_outs = cfg.num_outs
        self.lateral_convs = nn.ModuleList(ConvUnit(c, cfg.out_channels, 1) for c in self.in_channels)
        self.fpn_convs = nn.ModuleList(ConvUnit(cfg.out_channels, cfg.out_channels, 3) for _ in self.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's init: Xavier-uniform (gain 1) on every conv, bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                assert module.bias is not None  # every FPN conv has a bias
                nn.init.zeros_(module.bias)

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"FPN expects {len(self.in_channels)} feature maps, got {len(feats)}")
        for i, (feat, channels) in enumerate(zip(feats, self.in_channels)):
            if feat.dim() != 4 or feat.shape[1] != channels:
                raise ValueError(f"FPN input {i}: expected [N, {channels}, H, W], got {tuple(feat.shape)}")
        laterals = [conv(feat) for conv, feat in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            # Nearest upsampling to the lower level's exact size (odd sizes do not double evenly).
            up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
            laterals[i - 1] = laterals[i - 1] + up
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return outs
