"""The embedded shapes dataset: a tiny COCO-format instance set a small detector learns in minutes.

Five shape classes (circle, square, triangle, ellipse, star) in saturated colours on textured,
low-saturation backgrounds (smooth noise, gradients, stripes). Shapes may overlap: the later one
occludes, and each annotation (RLE mask, area, bbox) describes the *visible* part only. A
placement that would hide more than ``1 - min_visible`` of an earlier shape is rejected, so every
visible shape is annotated and none is almost hidden. Deterministic for a given seed.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "ellipse", "star")

SizeSpec = tuple[int, int] | tuple[tuple[int, int], tuple[int, int]]


def _image_size(rng: np.random.Generator, spec: SizeSpec) -> tuple[int, int]:
    if isinstance(spec[0], (tuple, list)):
        (h0, h1), (w0, w1) = spec
        return int(rng.integers(h0, h1 + 1)), int(rng.integers(w0, w1 + 1))
    return int(spec[0]), int(spec[1])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation texture: smooth noise, a gradient or stripes, plus fine pixel noise."""
    base = rng.uniform(50, 190)
    tint = rng.uniform(-12, 12, size=3)
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:
        coarse = rng.uniform(-35, 35, size=(max(2, h // 16), max(2, w // 16))).astype(np.float32)
        # Pillow sets its constants at run time, hidden from its type hints (9.0 has no Image.Resampling).
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))  # type: ignore[attr-defined]
    elif kind == 1:
        angle = rng.uniform(0, 2 * math.pi)
        t = (xx * math.cos(angle) + yy * math.sin(angle)) / max(h, w)
        field = rng.uniform(30, 60) * (t - t.mean())
    else:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 20)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        field = rng.uniform(12, 28) * np.sin(2 * math.pi * t / period)
    img = base + field[..., None] + tint[None, None, :] + rng.normal(0, 4, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.float32)


def _colour(rng: np.random.Generator, hue: float | None) -> np.ndarray:
    h = rng.uniform(0, 1) if hue is None else (hue + rng.uniform(-0.04, 0.04)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(0.7, 1.0), rng.uniform(0.75, 1.0))
    return np.array([r, g, b], dtype=np.float32) * 255


def _polygon(kind: str, cx: float, cy: float, size: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    rot = rng.uniform(0, 2 * math.pi)
    if kind == "square":
        pts = [
            (size * 0.36 * math.cos(rot + k * math.pi / 2), size * 0.36 * math.sin(rot + k * math.pi / 2))
            for k in range(4)
        ]
        pts = [(p[0] * math.sqrt(2), p[1] * math.sqrt(2)) for p in pts]
    elif kind == "triangle":
        pts = [
            (size / 2 * math.cos(rot + k * 2 * math.pi / 3), size / 2 * math.sin(rot + k * 2 * math.pi / 3))
            for k in range(3)
        ]
    elif kind == "star":
        pts = []
        for k in range(10):
            r = size / 2 if k % 2 == 0 else size / 2 * 0.45
            pts.append((r * math.cos(rot + k * math.pi / 5), r * math.sin(rot + k * math.pi / 5)))
    elif kind == "ellipse":
        a, b = size / 2, size / 2 * rng.uniform(0.4, 0.6)
        n = 48
        pts = [
            (
                a * math.cos(t) * math.cos(rot) - b * math.sin(t) * math.sin(rot),
                a * math.cos(t) * math.sin(rot) + b * math.sin(t) * math.cos(rot),
            )
            for t in (2 * math.pi * k / n for k in range(n))
        ]
    else:  # circle
        r = size * 0.85 / 2
        pts = [(r * math.cos(2 * math.pi * k / 64), r * math.sin(2 * math.pi * k / 64)) for k in range(64)]
    return [(cx + x, cy + y) for x, y in pts]


def _shape_mask(kind: str, h: int, w: int, size: float, rng: np.random.Generator) -> np.ndarray:
    margin = size / 2 + 1
    cx = rng.uniform(margin, max(margin, w - margin))
    cy = rng.uniform(margin, max(margin, h - margin))
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(_polygon(kind, cx, cy, size, rng), fill=1)
    return np.asarray(canvas, dtype=bool)


def _make_image(
    rng: np.random.Generator,
    h: int,
    w: int,
    max_objects: int,
    obj_size: tuple[int, int],
    min_visible: float,
    class_colours: bool,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    img = _background(rng, h, w)
    bg_mean = img.reshape(-1, 3).mean(0)
    owner = np.zeros((h, w), dtype=np.int32)  # 0 = background, k = shape k (1-based)
    shapes: list[tuple[int, np.ndarray, np.ndarray]] = []  # (label, full mask, colour)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(len(classes)))
        hue = label / len(classes) if class_colours else None
        hi = min(obj_size[1], int(0.9 * min(h, w)))
        for _attempt in range(20):
            size = float(rng.uniform(min(obj_size[0], hi), hi))
            mask = _shape_mask(classes[label], h, w, size, rng)
            if mask.sum() < 16:
                continue
            trial = np.where(mask, len(shapes) + 1, owner)
            if all((trial == k + 1).sum() >= min_visible * (owner == k + 1).sum() for k in range(len(shapes))):
                break
        else:
            continue
        under = [shapes[k - 1][2] for k in np.unique(owner[mask]) if k > 0]
        for _c in range(20):
            colour = _colour(rng, hue)
            if np.linalg.norm(colour - bg_mean) > 90 and all(np.linalg.norm(colour - u) > 70 for u in under):
                break
        owner = trial
        shapes.append((label, mask, colour))
        shade = colour + rng.normal(0, 3, size=(h, w, 3)).astype(np.float32)
        img = np.where(mask[..., None], shade, img)
    visible = [(label, owner == k + 1) for k, (label, _m, _c) in enumerate(shapes)]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), [(lab, m) for lab, m in visible if m.sum() >= 16]


def _write_split(
    root: Path,
    split: str,
    num: int,
    rng: np.random.Generator,
    params: dict[str, Any],
    image_size: SizeSpec,
    max_objects: int,
    obj_size: tuple[int, int],
    min_visible: float,
    class_colours: bool,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> tuple[str, str]:
    img_dir = root / split
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(num):
        h, w = _image_size(rng, image_size)
        img, objects = _make_image(rng, h, w, max_objects, obj_size, min_visible, class_colours, classes)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for label, mask in objects:
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            bbox = [float(v) for v in mask_utils.toBbox(rle)]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask.sum()),
                    "bbox": bbox,
                    "iscrowd": 0,
                }
            )
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    ann_file = ann_dir / f"instances_{split}.json"
    data = {
        "info": {"description": "gcnet synthetic shapes", "params": params},
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"} for k, n in enumerate(classes)],
    }
    tmp = ann_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, ann_file)
    return str(ann_file), str(img_dir)


def make_synthetic_coco(
    root: str | os.PathLike[str],
    num_train: int = 400,
    num_val: int = 100,
    image_size: SizeSpec = (160, 160),
    seed: int = 0,
    max_objects: int = 5,
    object_size: tuple[int, int] = (16, 70),
    min_visible: float = 0.6,
    class_colours: bool = False,
    overwrite: bool = False,
    classes: tuple[str, ...] = SHAPE_CLASSES,
) -> dict[str, str]:
    """Write (or reuse, when the same parameters were written before) the shapes dataset.

    ``image_size`` is (h, w) or ((h_min, h_max), (w_min, w_max)) drawn per image. ``classes``: the
    shapes drawn (some of ``SHAPE_CLASSES``, e.g. a 3-class set to fine-tune a 5-class model on).
    Returns paths as strings: ``train_ann``, ``train_images``, ``val_ann``, ``val_images``
    (ready for :class:`gcnet.config.DataConfig`) and ``root``.
    """
    if num_train < 0 or num_val < 0:
        raise ValueError(f"make_synthetic_coco: num_train/num_val must be >= 0, got {num_train}/{num_val}")
    if not 1 <= max_objects:
        raise ValueError(f"make_synthetic_coco: max_objects must be >= 1, got {max_objects}")
    if not 4 <= object_size[0] <= object_size[1]:
        raise ValueError(f"make_synthetic_coco: object_size must be (min, max) with 4 <= min <= max, got {object_size}")
    root = Path(root)
    params: dict[str, Any] = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": json.loads(json.dumps(image_size)),
        "seed": seed,
        "max_objects": max_objects,
        "object_size": list(object_size),
        "min_visible": min_visible,
        "class_colours": class_colours,
        "version": 1,
    }
    unknown = [c for c in classes if c not in SHAPE_CLASSES]
    if not classes or unknown:
        raise ValueError(f"make_synthetic_coco: classes must be some of {SHAPE_CLASSES}, got {classes}")
    if tuple(classes) != SHAPE_CLASSES:  # the default leaves the parameters (and cached sets) as they were
        params["classes"] = list(classes)
    out = {"root": str(root)}
    for split, num, offset in (("train", num_train, 0), ("val", num_val, 1)):
        ann_file, img_dir = root / "annotations" / f"instances_{split}.json", root / split
        if (
            not overwrite
            and _same_params(ann_file, params)
            and all((img_dir / f"{i:06d}.png").is_file() for i in range(num))
        ):
            out[f"{split}_ann"], out[f"{split}_images"] = str(ann_file), str(img_dir)
            continue
        rng = np.random.default_rng([seed, offset])
        out[f"{split}_ann"], out[f"{split}_images"] = _write_split(
            root,
            split,
            num,
            rng,
            params,
            image_size,
            max_objects,
            cast("tuple[int, int]", tuple(object_size)),
            min_visible,
            class_colours,
            tuple(classes),
        )
    return out


def _same_params(ann_file: Path, params: dict[str, Any]) -> bool:
    try:
        return json.loads(ann_file.read_text()).get("info", {}).get("params") == params
    except (OSError, ValueError):
        return False
