"""Delta (dx, dy, dw, dh) box coder with the original's arithmetic (mmdet ``DeltaXYWHBBoxCoder``).

No +1 in widths; |dw|, |dh| clamped at |log(wh_ratio_clip)|; decoded boxes clipped to the
resized, unpadded image (x to [0, w], y to [0, h]). The operation order follows the original so
that results agree to the last float bit where possible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


class DeltaXYWHBBoxCoder:
    def __init__(
        self,
        means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
        stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        wh_ratio_clip: float = 16 / 1000,
    ) -> None:
        if len(means) != 4 or len(stds) != 4:
            raise ValueError(f"DeltaXYWHBBoxCoder: means and stds need 4 values, got {means!r}, {stds!r}")
        if not 0 < wh_ratio_clip:
            raise ValueError(f"DeltaXYWHBBoxCoder: wh_ratio_clip must be > 0, got {wh_ratio_clip}")
        self.means = tuple(float(m) for m in means)
        self.stds = tuple(float(s) for s in stds)
        self.wh_ratio_clip = float(wh_ratio_clip)
        self.max_ratio = abs(math.log(self.wh_ratio_clip))

    def encode(self, boxes: Tensor, gt: Tensor) -> Tensor:
        """Deltas [N, 4] that move ``boxes`` onto ``gt`` (computed in float32, like the original)."""
        if boxes.shape != gt.shape or boxes.shape[-1] != 4:
            raise ValueError(
                f"DeltaXYWHBBoxCoder.encode: boxes {tuple(boxes.shape)} and gt {tuple(gt.shape)} must both be [N, 4]"
            )
        p, g = boxes.float(), gt.float()
        px = (p[..., 0] + p[..., 2]) * 0.5
        py = (p[..., 1] + p[..., 3]) * 0.5
        pw = p[..., 2] - p[..., 0]
        ph = p[..., 3] - p[..., 1]
        gx = (g[..., 0] + g[..., 2]) * 0.5
        gy = (g[..., 1] + g[..., 3]) * 0.5
        gw = g[..., 2] - g[..., 0]
        gh = g[..., 3] - g[..., 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, boxes: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """Apply deltas [N, 4k] to boxes [N, 4] -> [N, 4k]; clip to ``max_shape`` = (h, w)."""
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"DeltaXYWHBBoxCoder.decode: boxes must be [N, 4], got {tuple(boxes.shape)}")
        if deltas.dim() != 2 or deltas.shape[0] != boxes.shape[0] or deltas.shape[1] % 4 != 0:
            raise ValueError(
                f"DeltaXYWHBBoxCoder.decode: deltas must be [N, 4k] with N = {boxes.shape[0]}, "
                f"got {tuple(deltas.shape)}"
            )
        n, k = deltas.shape[0], deltas.shape[1] // 4
        if n == 0:
            return deltas.new_zeros((0, 4 * k))
        dtype = torch.promote_types(boxes.dtype, deltas.dtype)
        boxes = boxes.to(dtype)
        d = deltas.to(dtype).reshape(-1, 4)
        stds = d.new_tensor(self.stds).view(1, 4)
        means = d.new_tensor(self.means).view(1, 4)
        d = d * stds + means
        dxy, dwh = d[:, :2], d[:, 2:]
        rois = boxes.repeat(1, k).reshape(-1, 4)
        pxy = (rois[:, :2] + rois[:, 2:]) * 0.5
        pwh = rois[:, 2:] - rois[:, :2]
        dwh = dwh.clamp(min=-self.max_ratio, max=self.max_ratio)
        gxy = pxy + pwh * dxy
        gwh = pwh * dwh.exp()
        out = torch.cat([gxy - gwh * 0.5, gxy + gwh * 0.5], dim=-1)
        if max_shape is not None:
            h, w = float(max_shape[0]), float(max_shape[1])
            x = out[:, 0::2].clamp(min=0, max=w)
            y = out[:, 1::2].clamp(min=0, max=h)
            out = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=-1)
        return out.reshape(n, 4 * k)
