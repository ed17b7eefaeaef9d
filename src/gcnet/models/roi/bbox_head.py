"""Box head with two shared FCs (mmdet ``Shared2FCBBoxHead``) and its delta helpers.

Classification has ``num_classes + 1`` outputs with background LAST (mmdet >= 2.0). Regression is
class-specific (``4 * num_classes``, columns 4c..4c+3 for class c; Mask R-CNN) or class-agnostic
(4; Cascade Mask R-CNN).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from gcnet.boxes import DeltaXYWHBBoxCoder

_OUTPUT_INIT_STD = {"fc_cls": 0.01, "fc_reg": 0.001}  # the original's Normal init of the output layers


class Shared2FCBBoxHead(nn.Module):
    """flatten(C, 7, 7) -> fc 1024 -> ReLU -> fc 1024 -> ReLU -> (fc_cls, fc_reg)."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        roi_size: int = 7,
        fc_channels: int = 1024,
        reg_class_agnostic: bool = False,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"Shared2FCBBoxHead: num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.reg_class_agnostic = reg_class_agnostic
        self.shared_fcs = nn.ModuleList(
            [nn.Linear(in_channels * roi_size * roi_size, fc_channels), nn.Linear(fc_channels, fc_channels)]
        )
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, 4 if reg_class_agnostic else 4 * num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The original's init: Xavier-uniform shared FCs, Normal(0.01) cls, Normal(0.001) reg, zero biases."""
        for fc in self.shared_fcs:
            fc = cast(nn.Linear, fc)
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        self._init_outputs(("fc_cls", "fc_reg"))

    def class_layers(self) -> dict[str, nn.Module]:
        """The layers whose shape and meaning follow the classes: what fine-tuning on other classes
        starts afresh (the classifier; the regression too unless it is class-agnostic)."""
        layers: dict[str, nn.Module] = {"fc_cls": self.fc_cls}
        if not self.reg_class_agnostic:
            layers["fc_reg"] = self.fc_reg
        return layers

    def reset_class_layers(self) -> None:
        """The class layers as a fresh head initialises them."""
        self._init_outputs(tuple(self.class_layers()))

    def _init_outputs(self, names: tuple[str, ...]) -> None:
        for name in names:
            fc = getattr(self, name)
            nn.init.normal_(fc.weight, std=_OUTPUT_INIT_STD[name])
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """RoI features [K, C, 7, 7] -> (class logits [K, num_classes + 1], deltas [K, 4 or 4C])."""
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = torch.relu_(fc(x))  # in place on the fc's fresh output
        return self.fc_cls(x), self.fc_reg(x)


def select_deltas(deltas: Tensor, labels: Tensor) -> Tensor:
    """Deltas [K, 4] of each RoI's label: columns 4c..4c+3, or the only 4 when class-agnostic."""
    if deltas.shape[1] == 4:
        return deltas
    k = deltas.shape[0]
    if k == 0:
        return deltas.new_zeros((0, 4))
    return deltas.view(k, -1, 4)[torch.arange(k, device=deltas.device), labels]


def regress_by_label(
    coder: DeltaXYWHBBoxCoder,
    boxes: Tensor,
    deltas: Tensor,
    labels: Tensor,
    max_shape: tuple[int, int],
) -> Tensor:
    """Move each box by its label's deltas, clipped to the image (mmdet ``regress_by_class``)."""
    return coder.decode(boxes, select_deltas(deltas, labels), max_shape=max_shape)


def decode_all_classes(coder: DeltaXYWHBBoxCoder, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int]) -> Tensor:
    """Boxes [K, 4] + deltas [K, 4k] -> [K, k, 4] (k = classes, or 1 when class-agnostic)."""
    k = deltas.shape[1] // 4
    repeated = boxes.repeat_interleave(k, dim=0)
    decoded = coder.decode(repeated, deltas.reshape(-1, 4), max_shape=max_shape)
    return decoded.view(boxes.shape[0], k, 4)
