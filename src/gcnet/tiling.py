"""Tiled prediction for images much larger than the detector's input: the windows to cut and the
merge of the windows' detections back into one image.

A detector resizes every image to its test scale (1333x800 for the zoo), so a 6000x4000 photo
loses a 4.5x factor and small objects vanish. Cutting it into ``size`` x ``size`` windows that
overlap, detecting in each at the detector's own scale and merging the results by NMS finds them
(SAHI's "sliced prediction", arXiv 2202.06934). The windows follow SAHI's ``get_slice_bboxes``:
along each axis they start at 0 and step by ``size - int(overlap * size)``; the last one is moved
back to end at the image edge, so no window is smaller than ``size`` unless the image is.

A window cuts the objects that cross its inner edges; their partial boxes overlap the whole box
(from the neighbour that overlaps it, or the full-image pass) too little for IoU-NMS to remove
them. :func:`drop_cut` removes a window's detections that reach an edge it shares with the rest of
the image before the merge (what SAHI's intersection-over-smaller matching is meant for).

:func:`merge_detections` is the one merge of several views of the same image (tiles here,
flipped views in :mod:`gcnet.models.tta`): concatenate, NMS, keep the best.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gcnet.boxes import batched_nms
from gcnet.masks import BoxMasks
from gcnet.structures import Detections

Window = tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1/y1 exclusive


def _starts(length: int, size: int, step: int) -> list[tuple[int, int]]:
    """(start, end) of the windows along one axis of ``length`` px (SAHI's order and placement)."""
    spans = []
    start = 0
    while True:
        end = start + size
        if end >= length:
            spans.append((max(0, length - size), length))
            return spans
        spans.append((start, end))
        start += step


def tile_windows(height: int, width: int, size: int, overlap: float) -> list[Window]:
    """Windows (x0, y0, x1, y1) of at most ``size`` x ``size`` px covering a ``height`` x ``width``
    image, row by row; neighbours overlap by ``int(overlap * size)`` px (more where the last one
    is moved back to end at the image edge). An image no larger than ``size`` is one window."""
    if height < 1 or width < 1:
        raise ValueError(f"tile_windows: image size must be positive, got {height}x{width}")
    if size < 1:
        raise ValueError(f"tile_windows: size must be >= 1, got {size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"tile_windows: overlap must be in [0, 1), got {overlap}")
    step = size - int(overlap * size)
    rows = _starts(height, size, step)
    columns = _starts(width, size, step)
    return [(x0, y0, x1, y1) for y0, y1 in rows for x0, x1 in columns]


def drop_cut(det: Detections, window: Window, image_shape: tuple[int, int], margin: float = 2.0) -> Detections:
    """``det`` (in the window's pixels) without the detections whose box comes within ``margin`` px
    of an edge of ``window`` that lies inside the ``image_shape`` (H, W) image: objects the window
    cut. One smaller than the windows' overlap lies whole in a neighbour; a larger one is left to
    the full-image pass. Edges on the image border keep theirs."""
    x0, y0, x1, y1 = window
    height, width = image_shape
    boxes = det.boxes
    cut = torch.zeros(len(det), dtype=torch.bool, device=boxes.device)
    if x0 > 0:
        cut |= boxes[:, 0] <= margin
    if y0 > 0:
        cut |= boxes[:, 1] <= margin
    if x1 < width:
        cut |= boxes[:, 2] >= (x1 - x0) - margin
    if y1 < height:
        cut |= boxes[:, 3] >= (y1 - y0) - margin
    return det[~cut]


def merge_detections(
    parts: Sequence[Detections],
    iou_thr: float = 0.5,
    class_agnostic: bool = False,
    max_per_img: int = 0,
) -> Detections:
    """One image's detections from several views already in its pixels: concatenated in order,
    NMS'd (within each class unless ``class_agnostic``; mmcv's ``batched_nms``, as the original's
    test-time merges), the best ``max_per_img`` kept (0 keeps all), sorted by descending score.
    Each kept detection keeps its own mask; masks are not merged."""
    if not parts:
        raise ValueError("merge_detections: no detections to merge")
    with_masks = [p.masks is not None for p in parts]
    if any(with_masks) and not all(with_masks):
        raise ValueError("merge_detections: some parts have masks and some do not")
    boxes = torch.cat([p.boxes for p in parts])
    scores = torch.cat([p.scores for p in parts])
    labels = torch.cat([p.labels for p in parts])
    groups = torch.zeros_like(labels) if class_agnostic else labels
    keep = batched_nms(boxes, scores, groups, iou_thr)
    if max_per_img > 0:
        keep = keep[:max_per_img]
    masks = BoxMasks.cat([p.masks for p in parts if p.masks is not None])[keep] if all(with_masks) else None
    return Detections(boxes[keep], scores[keep], labels[keep], masks, class_names=parts[0].class_names)


def merge_tiles(
    parts: Sequence[Detections],
    offsets: Sequence[tuple[int, int]],
    image_shape: tuple[int, int],
    iou_thr: float = 0.5,
    class_agnostic: bool = False,
    max_per_img: int = 0,
) -> Detections:
    """Detections of windows (each in its window's pixels, its top-left corner at ``offsets[i]`` =
    (x0, y0) of the image) -> one :class:`Detections` of the ``image_shape`` (H, W) image: boxes and
    masks moved by their offset, then :func:`merge_detections`. A full-image pass is a part with
    offset (0, 0)."""
    if len(parts) != len(offsets):
        raise ValueError(f"merge_tiles: {len(parts)} parts but {len(offsets)} offsets")
    shifted = []
    for part, (dx, dy) in zip(parts, offsets):
        shift = torch.tensor([dx, dy, dx, dy], dtype=part.boxes.dtype, device=part.boxes.device)
        masks = None if part.masks is None else part.masks.shifted(dx, dy, image_shape)
        shifted.append(Detections(part.boxes + shift, part.scores, part.labels, masks, part.class_names))
    return merge_detections(shifted, iou_thr, class_agnostic, max_per_img)
