"""Batching: pad normalised images (and target masks) bottom/right to a common size.

The original pads to a multiple of 32 with value 0 *after* normalisation (mmdet Pad /
DetDataPreprocessor), and pads the GT masks the same way (3.x ``pad_mask=True``). Each image's
own padded extent (its ``pad_shape``, which the RPN loss's valid anchors follow) goes in its meta.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor

from gcnet.data.transforms import padded_size
from gcnet.structures import Batch, ImageMeta, Targets

Sample = tuple[Tensor, ImageMeta, Targets | None]


def collate(samples: Sequence[Sample], size_divisor: int = 32) -> Batch:
    """Stack ``(image [3,h,w], meta, targets | None)`` samples into a zero-padded :class:`Batch`.

    Each meta's ``pad_shape`` becomes its ``img_shape`` rounded up to ``size_divisor``.
    """
    if len(samples) == 0:
        raise ValueError("collate: got an empty list of samples")
    images = [s[0] for s in samples]
    for i, img in enumerate(images):
        if img.ndim != 3:
            raise ValueError(f"collate: sample {i} image must be [C, h, w], got {tuple(img.shape)}")
    max_h = max(int(img.shape[1]) for img in images)
    max_w = max(int(img.shape[2]) for img in images)
    pad_h, pad_w = padded_size(max_h, max_w, size_divisor)
    batch = images[0].new_zeros((len(images), int(images[0].shape[0]), pad_h, pad_w))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[1], : img.shape[2]] = img
    metas = [replace(s[1], pad_shape=padded_size(*s[1].img_shape, size_divisor)) for s in samples]
    has_targets = [s[2] is not None for s in samples]
    if any(has_targets) and not all(has_targets):
        raise ValueError("collate: some samples have targets and others do not")
    targets = None
    if all(has_targets):
        targets = [_pad_targets(s[2], pad_h, pad_w) for s in samples]  # type: ignore[arg-type]
    return Batch(images=batch, metas=metas, targets=targets)


def _pad_targets(targets: Targets, pad_h: int, pad_w: int) -> Targets:
    masks = targets.masks
    if masks is not None:
        masks = F.pad(masks, (0, pad_w - int(masks.shape[2]), 0, pad_h - int(masks.shape[1])), value=0)
    return Targets(boxes=targets.boxes, labels=targets.labels, masks=masks)


def stack_images(images: Sequence[Tensor], size_divisor: int = 32) -> Tensor:
    """Pad a list of ``[3, h, w]`` images to one zero-padded ``[B, 3, H, W]`` tensor."""
    dummy = [(img, ImageMeta((1, 1), (1, 1), (1.0, 1.0)), None) for img in images]
    return collate(dummy, size_divisor).images
