"""Memory-layout conversion for kernels that only take NCHW (NNPACK convs, torchvision's RoIAlign)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_nchw(x: Tensor) -> Tensor:
    """``x`` as a contiguous NCHW tensor (itself when it already is).

    A channels-last CPU map (without autograd) is transposed an image at a time through the blocked
    2-D transpose copy, ~3x faster than the generic strided copy that ``.contiguous()`` uses
    (P2 of an 800x1216 image, 256 channels: 44 ms vs 136 ms, 1 thread).
    """
    if x.dim() != 4 or x.is_contiguous():
        return x
    if (
        x.device.type != "cpu"
        or not x.is_contiguous(memory_format=torch.channels_last)
        or (torch.is_grad_enabled() and x.requires_grad)
    ):
        return x.contiguous()
    n, c, h, w = x.shape
    out = torch.empty((n, c, h, w), dtype=x.dtype, device=x.device)
    for i in range(n):
        out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out
