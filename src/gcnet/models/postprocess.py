"""Map detections back to the original image: box rescaling (mmdet 3.x) and mask pasting.

The paste lives with the compact masks in :mod:`gcnet.masks` (``paste_masks`` stays importable
here for existing callers): detections carry :class:`~gcnet.masks.BoxMasks` and paste on demand.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gcnet.masks import paste_masks

__all__ = ["paste_masks", "rescale_boxes"]


def rescale_boxes(boxes: Tensor, scale_factor: tuple[float, float]) -> Tensor:
    """Resized-image boxes -> original-image boxes: divide by float32 [sw, sh, sw, sh] (mmdet 3.x)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"rescale_boxes: boxes must be [N, 4], got {tuple(boxes.shape)}")
    sw, sh = scale_factor
    if sw <= 0 or sh <= 0:
        raise ValueError(f"rescale_boxes: scale_factor must be positive, got {scale_factor}")
    factor = torch.tensor([sw, sh, sw, sh], dtype=torch.float32, device=boxes.device)
    return boxes.float() / factor
