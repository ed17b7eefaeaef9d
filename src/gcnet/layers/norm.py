"""Backbone normalisation layers: BatchNorm (SyncBN at train time) and a frozen BatchNorm.

The original uses BN (``norm_eval=True``) or SyncBN in the backbone; both store the same five
state_dict entries, so every variant here does too and any checkpoint loads into any of them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

NORM_KINDS = ("bn", "syncbn", "frozen_bn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, nothing trains).

    Unlike ``torchvision.ops.FrozenBatchNorm2d`` it keeps ``num_batches_tracked``, so its
    state_dict has exactly BatchNorm2d's five entries and loads either way.
    """

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Old files (torch < 0.4.1, e.g. the ImageNet ResNets) have no num_batches_tracked.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        # Fold into one scale and shift, computed in fp32 and applied in the input's dtype.
        scale = self.weight.float() * torch.rsqrt(self.running_var.float() + self.eps)
        shift = self.bias.float() - self.running_mean.float() * scale
        return x * scale.to(x.dtype).view(1, -1, 1, 1) + shift.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def build_norm(kind: str, num_features: int) -> nn.Module:
    """Norm layer for the backbone: ``"bn"``/``"syncbn"`` -> BatchNorm2d(eps 1e-5), ``"frozen_bn"``.

    ``"syncbn"`` builds a plain BatchNorm2d: when it runs distributed, the trainer converts the
    backbone's live BNs with ``gcnet.engine.convert_sync_batchnorm`` (``nn.SyncBatchNorm`` on
    CUDA, a gloo-capable one on CPU); the original's SyncBN is BatchNorm2d outside distributed
    training.
    """
    if kind in ("bn", "syncbn"):
        return nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1)
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(num_features, eps=1e-5)
    raise ValueError(f"build_norm: unknown norm kind {kind!r}; expected one of {NORM_KINDS}")
