"""Map detections back to the original image: box rescaling and mask pasting.

The original (mmdet ``FCNMaskHead._predict_by_feat_single`` / ``_do_paste_mask``) samples each
28x28 probability map with ``grid_sample`` (bilinear, zero padding, align_corners False) at the
pixel centres of the original image and thresholds with ``>=``. On CPU it pastes each mask in a
tight window around its box; on GPU it pastes whole images in chunks of at most 1 GiB of float32.
For a threshold in (0, 1] both give the same bits: every pixel outside the window samples at
most half of an edge cell, so it stays below the threshold.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GPU_CHUNK_BYTES = 1 << 30  # the original's GPU_MEM_LIMIT


def rescale_boxes(boxes: Tensor, scale_factor: tuple[float, float]) -> Tensor:
    """Resized-image boxes -> original-image boxes: divide by float32 [sw, sh, sw, sh] (mmdet 3.x)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"rescale_boxes: boxes must be [N, 4], got {tuple(boxes.shape)}")
    sw, sh = scale_factor
    if sw <= 0 or sh <= 0:
        raise ValueError(f"rescale_boxes: scale_factor must be positive, got {scale_factor}")
    factor = torch.tensor([sw, sh, sw, sh], dtype=torch.float32, device=boxes.device)
    return boxes.float() / factor


def _sample_window(probs: Tensor, boxes: Tensor, x0: int, y0: int, x1: int, y1: int) -> Tensor:
    """Bilinear samples [N, y1-y0, x1-x0] of ``probs`` [N, 1, m, m] at pixel centres of the window."""
    n = probs.shape[0]
    device = probs.device
    bx0, by0, bx1, by1 = boxes.split(1, dim=1)  # each [N, 1]
    ys = torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=device, dtype=torch.float32) + 0.5
    gy = (ys - by0) / (by1 - by0) * 2 - 1  # [N, h]
    gx = (xs - bx0) / (bx1 - bx0) * 2 - 1  # [N, w]
    # A zero-size box divides by zero; the original maps the resulting inf to 0.
    gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
    gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
    grid = torch.stack(
        [
            gx[:, None, :].expand(n, gy.shape[1], gx.shape[1]),
            gy[:, :, None].expand(n, gy.shape[1], gx.shape[1]),
        ],
        dim=3,
    )
    out = F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0]


def paste_masks(
    mask_probs: Tensor,
    boxes: Tensor,
    image_shape: tuple[int, int],
    threshold: float = 0.5,
    *,
    windowed: bool | None = None,
    chunk_bytes: int = GPU_CHUNK_BYTES,
) -> Tensor:
    """Paste probability maps [N, m, m] into boxes [N, 4] of an (H, W) image -> bool [N, H, W].

    ``windowed`` None picks the original's choice: a tight window per mask on CPU, whole-image
    chunks of at most ``chunk_bytes`` float32 bytes elsewhere. Both give identical masks.
    """
    if mask_probs.dim() != 3 or mask_probs.shape[1] != mask_probs.shape[2]:
        raise ValueError(f"paste_masks: mask_probs must be [N, m, m], got {tuple(mask_probs.shape)}")
    if boxes.dim() != 2 or boxes.shape != (mask_probs.shape[0], 4):
        raise ValueError(
            f"paste_masks: boxes must be [{mask_probs.shape[0]}, 4] like mask_probs, got {tuple(boxes.shape)}"
        )
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"paste_masks: threshold must be in (0, 1], got {threshold}")
    height, width = int(image_shape[0]), int(image_shape[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"paste_masks: image_shape must be positive (H, W), got {image_shape}")
    device = mask_probs.device
    n = mask_probs.shape[0]
    out = torch.zeros((n, height, width), dtype=torch.bool, device=device)
    if n == 0:
        return out
    probs = mask_probs.float()[:, None]
    boxes = boxes.to(device=device, dtype=torch.float32)
    if windowed is None:
        windowed = device.type == "cpu"

    if windowed:
        # One mask at a time in a window of the box grown by 1 px (the original's skip_empty path).
        corners = boxes.detach().cpu()
        for i in range(n):
            x0 = max(int(math.floor(float(corners[i, 0]))) - 1, 0)
            y0 = max(int(math.floor(float(corners[i, 1]))) - 1, 0)
            x1 = min(int(math.ceil(float(corners[i, 2]))) + 1, width)
            y1 = min(int(math.ceil(float(corners[i, 3]))) + 1, height)
            if x1 <= x0 or y1 <= y0:
                continue
            window = _sample_window(probs[i : i + 1], boxes[i : i + 1], x0, y0, x1, y1)
            out[i, y0:y1, x0:x1] = window[0] >= threshold
        return out

    if chunk_bytes <= 0:
        raise ValueError(f"paste_masks: chunk_bytes must be positive, got {chunk_bytes}")
    num_chunks = min(max(math.ceil(n * height * width * 4 / chunk_bytes), 1), n)
    for inds in torch.arange(n, device=device).chunk(num_chunks):
        out[inds] = _sample_window(probs[inds], boxes[inds], 0, 0, width, height) >= threshold
    return out
