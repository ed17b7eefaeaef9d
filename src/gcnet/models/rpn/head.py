"""The RPN's convolutions: shared 3x3 conv + ReLU, then 1x1 objectness and 1x1 deltas per level."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.boxes import AnchorGenerator
from gcnet.models.config import RPNConfig


class RPNHead(nn.Module):
    """Static-shape part of the RPN: it holds every RPN parameter and nothing data-dependent,
    so it compiles and exports as is. Parameter names are the original's state_dict keys."""

    def __init__(self, cfg: RPNConfig) -> None:
        super().__init__()
        num_anchors = AnchorGenerator(cfg.strides, cfg.scales, cfg.ratios).num_anchors_per_location
        self.rpn_conv = nn.Conv2d(cfg.in_channels, cfg.feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(cfg.feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(cfg.feat_channels, num_anchors * 4, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.01) weights, zero biases (the original's RPN init)."""
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            assert conv.bias is not None  # built with bias=True
            nn.init.zeros_(conv.bias)

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: logits [N, A, H, W] and deltas [N, 4A, H, W], batched over the images."""
        logits, deltas = [], []
        for x in feats:
            h = F.relu(self.rpn_conv(x), inplace=True)  # the conv's fresh output; saves a map allocation
            logits.append(self.rpn_cls(h))
            deltas.append(self.rpn_reg(h))
        return logits, deltas
