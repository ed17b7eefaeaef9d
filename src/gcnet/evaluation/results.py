"""Detections -> COCO result dicts, and gathering them from several processes.

As the original: label i -> i-th category id in ascending order; bbox as [x1, y1, x2-x1, y2-y1]
(no +1); masks as COCO compressed RLE with ``counts`` decoded to str (``BoxMasks.rle``, built from each
mask's box window, never a full-image array).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from gcnet.structures import Detections, LabelMap

__all__ = ["LabelMap", "detections_to_coco", "encode_masks", "gather_results"]


def encode_masks(masks: torch.Tensor) -> list[dict[str, Any]]:
    """bool/uint8 ``[N, H, W]`` masks -> COCO compressed RLEs with str counts."""
    if masks.ndim != 3:
        raise ValueError(f"encode_masks: expected [N, H, W] masks, got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        return []
    array = np.asfortranarray(masks.detach().to("cpu", torch.uint8).permute(1, 2, 0).numpy())
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return list(rles)


def detections_to_coco(
    detections: Sequence[Detections], image_ids: Sequence[int], label_to_cat_id: LabelMap
) -> list[dict[str, Any]]:
    """One COCO result dict per detection (``image_id``, ``category_id``, ``bbox`` xywh,
    ``score`` and, when masks exist, ``segmentation``): :meth:`Detections.to_coco` of each image."""
    if len(detections) != len(image_ids):
        raise ValueError(f"detections_to_coco: {len(detections)} detections but {len(image_ids)} image_ids")
    results: list[dict[str, Any]] = []
    for det, image_id in zip(detections, image_ids):
        results.extend(det.to_coco(image_id, label_to_cat_id))
    return results


def gather_results(results: list[Any]) -> list[Any]:
    """Concatenate every process's results (``all_gather_object``) in rank order; the input
    unchanged when torch.distributed is not initialised. Evaluate the merged list on rank 0 only."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(results)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    merged: list[Any] = []
    for part in parts:
        merged.extend(part)
    return merged
