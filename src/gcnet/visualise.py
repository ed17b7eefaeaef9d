"""Draw detections (coloured masks, boxes, class names and scores) onto an image."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gcnet.structures import Detections


def class_colour(label: int) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    score_thr: float = 0.3,
    mask_alpha: float = 0.45,
) -> Image.Image:
    """Return a copy of the uint8 RGB ``image`` with every detection above ``score_thr`` drawn."""
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    canvas = image.astype(np.float32).copy()
    keep = (detections.scores >= score_thr).nonzero().flatten().tolist()
    names = detections.label_names
    masks = detections.masks
    if masks is not None:
        if masks.image_shape != image.shape[:2]:
            raise ValueError(f"masks are for a {masks.image_shape} image, the image is {image.shape[:2]}")
        for i in keep:  # each mask pasted in its box's window only
            x0, y0, window = masks.window(i)
            inside = window.cpu().numpy()
            region = canvas[y0 : y0 + inside.shape[0], x0 : x0 + inside.shape[1]]
            tint = np.array(class_colour(int(detections.labels[i])), dtype=np.float32)
            region[inside] = region[inside] * (1.0 - mask_alpha) + tint * mask_alpha
    out = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    for i in keep:
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
        colour = class_colour(int(detections.labels[i]))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=2)
        name = names[i] or str(int(detections.labels[i]))
        text = f"{name} {float(detections.scores[i]):.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        ty = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle((x1, ty, x1 + (right - left) + 4, ty + (bottom - top) + 2), fill=colour)
        draw.text((x1 + 2, ty), text, fill=(0, 0, 0), font=font)
    return out


def save_visualisation(image: np.ndarray, detections: Detections, path: str | Path, score_thr: float = 0.3) -> Path:
    """Draw and write a PNG; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_detections(image, detections, score_thr).save(path)
    return path
