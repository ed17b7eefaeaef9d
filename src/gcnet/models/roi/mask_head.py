"""Fully convolutional mask head (mmdet ``FCNMaskHead``): 4 x (3x3 conv + ReLU), 2x deconv, 1x1 logits.

Parameter names follow the original (``convs.{i}.conv``, ``upsample``, ``conv_logits``) so the
published checkpoints load unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvReLU(nn.Module):
    """3x3 conv + ReLU, holding its conv as ``conv`` like the original's ConvModule."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        # ConvModule's init: kaiming normal, fan_out, ReLU gain, bias 0.
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        assert self.conv.bias is not None  # built with bias=True
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu_(self.conv(x))  # in place on the conv's fresh output


def _kaiming_init(m: nn.Conv2d | nn.ConvTranspose2d) -> None:
    """The original's init of the upsampling and logit layers: kaiming normal, fan_out, bias 0."""
    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    assert m.bias is not None  # built with bias=True
    nn.init.zeros_(m.bias)


class FCNMaskHead(nn.Module):
    """RoI features [K, C, 14, 14] -> class-specific mask logits [K, num_classes, 28, 28]."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        conv_channels: int = 256,
        num_convs: int = 4,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"FCNMaskHead: num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.convs = nn.ModuleList(
            [ConvReLU(in_channels if i == 0 else conv_channels, conv_channels) for i in range(num_convs)]
        )
        last = conv_channels if num_convs > 0 else in_channels
        self.upsample = nn.ConvTranspose2d(last, conv_channels, kernel_size=2, stride=2)
        self.conv_logits = nn.Conv2d(conv_channels, num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            _kaiming_init(m)

    def class_layers(self) -> dict[str, nn.Module]:
        """The layer that follows the classes (one logit map each): what fine-tuning on other
        classes starts afresh."""
        return {"conv_logits": self.conv_logits}

    def reset_class_layers(self) -> None:
        """The class layer as a fresh head initialises it."""
        _kaiming_init(self.conv_logits)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(F.relu(self.upsample(x), inplace=True))
