"""The Global Context (GC) block of GCNet (Cao et al., 2019).

Same parameters, names and numerics as the original's ``ContextBlock`` (mmcv
``cnn/bricks/context_block.py``), so published checkpoints load without renaming:
context modelling (attention or average pooling) -> transform (1x1 conv, LayerNorm, ReLU,
1x1 conv) -> fusion (sigmoid-gated multiply first, then broadcast add).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

POOLING_TYPES = ("att", "avg")
FUSION_TYPES = ("channel_add", "channel_mul")


def _transform(in_channels: int, planes: int) -> nn.Sequential:
    """1x1 conv -> LayerNorm over [planes, 1, 1] -> ReLU -> 1x1 conv; keys `.0`, `.1`, `.3`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, planes, kernel_size=1),
        nn.LayerNorm([planes, 1, 1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(planes, in_channels, kernel_size=1),
    )


class ContextBlock(nn.Module):
    """GC block: ``out = x * sigmoid(T_mul(ctx)) + T_add(ctx)`` with ``ctx`` one vector per image.

    Args:
        in_channels: channels C of the input (and output).
        ratio: bottleneck ratio of the transform; ``planes = int(C * ratio)`` as in the original.
        pooling_type: ``"att"`` (softmax attention over all H*W positions) or ``"avg"``.
        fusion_types: non-empty subset of ``("channel_add", "channel_mul")``.

    At construction the last conv of every fusion is zero, so the block starts as the identity.

    ``fuse_inplace`` (default False): when autograd is off, write the fusion into ``x`` instead of
    a new tensor (same values, one feature-map allocation less). The backbone turns it on for the
    bn3 output, which nothing else reads; leave it off where the caller still needs ``x``.
    """

    def __init__(
        self,
        in_channels: int,
        ratio: float,
        pooling_type: str = "att",
        fusion_types: Sequence[str] = ("channel_add",),
    ) -> None:
        super().__init__()
        if isinstance(fusion_types, str):
            raise ValueError(f"ContextBlock: fusion_types must be a sequence of names, got the string {fusion_types!r}")
        fusion_types = tuple(fusion_types)
        if pooling_type not in POOLING_TYPES:
            raise ValueError(f"ContextBlock: unknown pooling_type {pooling_type!r}; expected one of {POOLING_TYPES}")
        if not fusion_types:
            raise ValueError(f"ContextBlock: fusion_types is empty; give at least one of {FUSION_TYPES}")
        unknown = [f for f in fusion_types if f not in FUSION_TYPES]
        if unknown:
            raise ValueError(f"ContextBlock: unknown fusion type(s) {unknown}; expected names from {FUSION_TYPES}")
        if len(set(fusion_types)) != len(fusion_types):
            raise ValueError(f"ContextBlock: fusion_types has duplicates: {fusion_types}")
        if in_channels <= 0:
            raise ValueError(f"ContextBlock: in_channels must be positive, got {in_channels}")
        planes = int(in_channels * ratio)
        if planes < 1:
            raise ValueError(
                f"ContextBlock: ratio {ratio} gives int({in_channels} * {ratio}) = {planes} planes; need >= 1"
            )
        self.in_channels = in_channels
        self.ratio = ratio
        self.planes = planes
        self.pooling_type = pooling_type
        self.fusion_types = fusion_types
        self.fuse_inplace = False

        # Attribute names are the original's state_dict keys.
        self.conv_mask = nn.Conv2d(in_channels, 1, kernel_size=1) if pooling_type == "att" else None
        self.channel_add_conv = _transform(in_channels, planes) if "channel_add" in fusion_types else None
        self.channel_mul_conv = _transform(in_channels, planes) if "channel_mul" in fusion_types else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Original init: conv_mask Kaiming-normal (fan_in, ReLU gain), bias 0; last fusion conv 0."""
        if self.conv_mask is not None:
            nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
            assert self.conv_mask.bias is not None  # built with bias=True
            nn.init.zeros_(self.conv_mask.bias)
        for fusion in (self.channel_add_conv, self.channel_mul_conv):
            if fusion is not None:
                last = cast(nn.Conv2d, fusion[3])  # _transform's last 1x1 conv
                assert last.bias is not None
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def spatial_pool(self, x: Tensor) -> Tensor:
        """Global context [N, C, 1, 1]: softmax-weighted (``att``) or plain (``avg``) mean over H*W."""
        n, c = x.shape[:2]
        if self.conv_mask is None:
            return x.mean(dim=(2, 3), keepdim=True)
        logits = self.conv_mask(x).flatten(1)  # [N, H*W]
        # The softmax runs in fp32 even under autocast: H*W can be ~20k terms.
        weights = torch.softmax(logits.float(), dim=1)
        feats = x.flatten(2)  # [N, C, H*W]; a view, also for channels_last inputs
        context = torch.bmm(feats, weights.to(feats.dtype).unsqueeze(2))  # [N, C, 1]
        return context.view(n, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ContextBlock expects [N, {self.in_channels}, H, W] input, got {tuple(x.shape)}")
        context = self.spatial_pool(x)
        inplace = self.fuse_inplace and not torch.is_grad_enabled()
        out = x
        if self.channel_mul_conv is not None:
            gate = torch.sigmoid(self.channel_mul_conv(context))
            if inplace and torch.result_type(out, gate) == out.dtype:
                out = out.mul_(gate)
            else:
                out = out * gate
        if self.channel_add_conv is not None:
            term = self.channel_add_conv(context)
            if inplace and torch.result_type(out, term) == out.dtype:
                out = out.add_(term)
            else:
                out = out + term
        return out

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, ratio={self.ratio}, planes={self.planes}, "
            f"pooling_type={self.pooling_type!r}, fusion_types={self.fusion_types}"
        )
