"""Deformable convolution v1 with its own offset branch (the original's ``DeformConv2dPack``).

The sampling runs through ``torchvision.ops.deform_conv2d``, which reads the offset channels in
the original's layout: for deform group g and kernel tap k = i * kw + j (row-major), channel
``g*2*kh*kw + 2k`` is dy and ``+ 1`` is dx (checked by ``tests/test_dcn.py`` with a hand-computed
bilinear sample).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

IntOrPair = int | tuple[int, int]


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype for ``device_type``, or None when autocast is off."""
    if device_type == "cuda" and not hasattr(torch, "get_autocast_dtype"):  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None
    if device_type == "cpu" and not hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


class DeformConv2dPack(nn.Module):
    """DCN v1: ``y = deform_conv(x, conv_offset(x), weight)``, no bias.

    Parameters (the original's keys): ``weight`` [out, in/groups, kh, kw] (same key and shape as
    the plain conv it replaces, so ImageNet weights load) and ``conv_offset`` = Conv2d(in,
    deform_groups*2*kh*kw, kernel, same stride/padding/dilation, bias) initialised to zero, so the
    layer starts as an ordinary convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair = 3,
        stride: IntOrPair = 1,
        padding: IntOrPair = 1,
        dilation: IntOrPair = 1,
        groups: int = 1,
        deform_groups: int = 1,
    ) -> None:
        super().__init__()
        for name, value, divisor_name, divisor in (
            ("in_channels", in_channels, "groups", groups),
            ("out_channels", out_channels, "groups", groups),
            ("in_channels", in_channels, "deform_groups", deform_groups),
        ):
            if value <= 0 or divisor <= 0 or value % divisor:
                raise ValueError(
                    f"DeformConv2dPack: {name}={value} and {divisor_name}={divisor} must be positive, "
                    f"with {name} divisible by {divisor_name}"
                )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deform_groups = deform_groups
        kh, kw = self.kernel_size
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.conv_offset = nn.Conv2d(
            in_channels,
            deform_groups * 2 * kh * kw,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight as nn.Conv2d initialises it (overwritten by ImageNet weights); offsets zero."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_offset.weight)
        assert self.conv_offset.bias is not None  # built with bias=True
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)
        autocast = _autocast_dtype(x.device.type)
        if autocast is not None or x.dtype in (torch.float16, torch.bfloat16):
            # torchvision's kernel has no bf16 version and no CPU autocast rule, so the sampling
            # runs in fp32 (as its CUDA autocast rule does) and the result comes back in the
            # autocast dtype (or the input's low-precision dtype), like any other conv.
            out_dtype = autocast if autocast is not None else x.dtype
            with torch.autocast(x.device.type, enabled=False):
                out = deform_conv2d(
                    x.float(),
                    offset.float(),
                    self.weight.float(),
                    None,
                    self.stride,
                    self.padding,
                    self.dilation,
                )
            return out.to(out_dtype)
        return deform_conv2d(
            x, offset.to(x.dtype), self.weight.to(x.dtype), None, self.stride, self.padding, self.dilation
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}, deform_groups={self.deform_groups}, bias=False"
        )
