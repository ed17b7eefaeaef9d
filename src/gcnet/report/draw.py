"""Draw COCO-format annotations or results (boxes, masks, class names, scores) onto an image.

Ground truth and detections are both COCO dicts here, so one drawer shows a dataset (``gcnet
browse``) and a model's failures next to the truth (the report), in the colours of
:func:`gcnet.visualise.class_colour` per class index. Small images are enlarged by an integer
factor first, so class names stay readable on the 160-pixel demo images.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from gcnet.visualise import class_colour

MIN_SIDE = 320  # images smaller than this are enlarged (nearest) before drawing


def annotation_mask(segmentation: Any, height: int, width: int) -> np.ndarray | None:
    """A COCO segmentation (polygons, RLE or uncompressed RLE) as a bool ``[H, W]`` mask; None if absent."""
    if not segmentation:
        return None
    if isinstance(segmentation, list):  # polygons
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _scale_for(image: np.ndarray) -> int:
    return max(1, MIN_SIDE // max(1, max(image.shape[:2])))


def draw_coco(
    image: np.ndarray,
    annotations: Sequence[Mapping[str, Any]],
    names: Mapping[int, str],
    labels: Mapping[int, int],
    show_scores: bool = False,
    mask_alpha: float = 0.45,
) -> Image.Image:
    """``image`` (uint8 RGB) with each annotation's mask, box and class name (and score) drawn.

    ``names`` / ``labels`` map category ids to names and class indices (colours)."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"draw_coco: expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scale = _scale_for(image)
    canvas = image.astype(np.float32)
    for ann in annotations:
        mask = annotation_mask(ann.get("segmentation"), height, width)
        if mask is None or mask.shape != (height, width):
            continue
        tint = np.array(class_colour(labels.get(int(ann["category_id"]), 0)), dtype=np.float32)
        canvas[mask] = canvas[mask] * (1.0 - mask_alpha) + tint * mask_alpha
    pixels = canvas.clip(0, 255).astype(np.uint8)
    if scale > 1:  # nearest-neighbour enlargement: each pixel a scale x scale block
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    out = Image.fromarray(pixels)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for ann in annotations:
        cat = int(ann["category_id"])
        colour = class_colour(labels.get(cat, 0))
        x, y, w, h = (float(v) * scale for v in ann["bbox"])
        crowd = bool(ann.get("iscrowd", 0))
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=1 if crowd else 2)
        text = names.get(cat, str(cat)) + (" (crowd)" if crowd else "")
        if show_scores and "score" in ann:
            text += f" {float(ann['score']):.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        ty = max(0.0, y - (bottom - top) - 2)
        draw.rectangle((x, ty, x + (right - left) + 4, ty + (bottom - top) + 2), fill=colour)
        draw.text((x + 2, ty), text, fill=(0, 0, 0), font=font)
    return out


def side_by_side(panels: Sequence[Image.Image], captions: Sequence[str], gap: int = 8) -> Image.Image:
    """Panels next to each other on white, each with its caption above."""
    font = ImageFont.load_default()
    caption_h = 16
    width = sum(p.width for p in panels) + gap * (len(panels) - 1)
    height = max(p.height for p in panels) + caption_h
    out = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    x = 0
    for panel, caption in zip(panels, captions):
        draw.text((x + 2, 2), caption, fill=(0, 0, 0), font=font)
        out.paste(panel, (x, caption_h))
        x += panel.width + gap
    return out
