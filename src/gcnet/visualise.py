"""Draw detections (coloured masks, boxes, class names and scores) onto an image.

Memory-light for huge photos: the only full-size image is the PIL drawing itself; each mask is
pasted and blended in its box's window only (a uint8 crop and float32 of the window).
Takes anything shaped like ``gcnet.structures.Detections`` (:class:`Drawable`), so that
``Detections.plot`` can call it without an import cycle.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from gcnet.masks import BoxMasks


class Drawable(Protocol):
    """What drawing reads: ``Detections``' fields (boxes xyxy in the image's pixels)."""

    @property
    def boxes(self) -> Tensor: ...
    @property
    def scores(self) -> Tensor: ...
    @property
    def labels(self) -> Tensor: ...
    @property
    def masks(self) -> BoxMasks | None: ...
    @property
    def label_names(self) -> list[str]: ...


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _blend_masks(canvas: Image.Image, masks: BoxMasks, labels: list[int], keep: list[int], alpha: float) -> None:
    """Tint each kept mask into the RGB ``canvas`` (in place), one box window at a time:
    pixel = trunc(pixel * (1 - alpha) + colour * alpha) in float32. Where masks overlap, each
    blend starts from whole levels, so the result can differ from blending a float32 copy of the
    whole image by at most 1 / alpha levels (2 at the default 0.45)."""
    for i in keep:
        x0, y0, window = masks.window(i)
        inside = window.cpu().numpy()
        if not inside.any():
            continue
        region = np.array(canvas.crop((x0, y0, x0 + inside.shape[1], y0 + inside.shape[0])))
        tint = np.array(class_colour(labels[i]), dtype=np.float32)
        mixed = region[inside].astype(np.float32) * (1.0 - alpha) + tint * alpha
        region[inside] = mixed.clip(0, 255).astype(np.uint8)
        canvas.paste(Image.fromarray(region), (x0, y0))


def draw_detections(
    image: np.ndarray,
    detections: Drawable,
    score_thr: float = 0.3,
    mask_alpha: float = 0.45,
) -> Image.Image:
    """Return a copy of the uint8 RGB ``image`` with every detection scoring >= ``score_thr`` drawn."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    keep = (detections.scores >= score_thr).nonzero().flatten().tolist()
    labels = [int(v) for v in detections.labels]
    names = detections.label_names
    masks = detections.masks
    if masks is not None and masks.image_shape != image.shape[:2]:
        raise ValueError(f"masks are for a {masks.image_shape} image, the image is {image.shape[:2]}")
    out = Image.fromarray(image)  # a copy: the caller's array is not drawn on
    if masks is not None:
        _blend_masks(out, masks, labels, keep, mask_alpha)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i in keep:
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
        colour = class_colour(labels[i])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        text = f"{names[i] or str(labels[i])} {float(detections.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2), fill=colour)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return out


def save_visualisation(
    image: np.ndarray,
    detections: Drawable,
    path: str | os.PathLike[str],
    score_thr: float = 0.3,
    mask_alpha: float = 0.45,
) -> Path:
    """Draw and write an image file (format from the suffix, e.g. PNG); returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, detections, score_thr, mask_alpha).save(path)
    return path
