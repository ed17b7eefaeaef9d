"""Look at a COCO-format set before training on it: its statistics and its ground truth drawn.

``gcnet browse ANNOTATIONS --images DIR --out DIR`` prints the number of images, the instances per
class, object sizes (COCO's small < 32^2 <= medium < 96^2 <= large, by the annotation's ``area``)
and the problems that make training or evaluation go wrong quietly (missing image files, image
sizes that differ from the json, boxes that are empty or leave the image, annotations of unknown
images or categories), then draws each image's boxes, masks and class names to ``DIR`` with an
``index.html`` to page through them.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gcnet.data import DatasetError, load_image, read_coco_json
from gcnet.errors import UserError
from gcnet.report import html as H
from gcnet.report.draw import draw_coco

SMALL, MEDIUM = 32**2, 96**2
MAX_PROBLEMS_SHOWN = 10


@dataclass
class ClassStats:
    """Instances of one category (crowd regions counted apart) and how many images hold it."""

    category_id: int
    name: str
    instances: int = 0
    crowd: int = 0
    images: int = 0
    small: int = 0
    medium: int = 0
    large: int = 0


@dataclass
class DatasetStats:
    """What ``gcnet browse`` prints and writes to ``stats.json``."""

    annotation_file: str
    images: int = 0
    images_without_annotations: int = 0
    instances: int = 0
    crowd: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: {"small": 0, "medium": 0, "large": 0})
    image_sizes: dict[str, Any] = field(default_factory=dict)
    classes: list[ClassStats] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    drawn: int = 0


def _size_name(area: float) -> str:
    return "small" if area < SMALL else "medium" if area < MEDIUM else "large"


def _area(ann: dict[str, Any]) -> float:
    if "area" in ann:
        return float(ann["area"])
    _, _, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
    return w * h


def dataset_stats(ann_file: str | os.PathLike[str], data: dict[str, Any] | None = None) -> DatasetStats:
    """Counts and consistency checks of a COCO instances json (read from ``ann_file`` unless given)."""
    data = read_coco_json(ann_file) if data is None else data
    stats = DatasetStats(annotation_file=str(ann_file), images=len(data.get("images", [])))
    images = {int(im["id"]): im for im in data.get("images", [])}
    if len(images) != stats.images:
        stats.problems.append(f"{stats.images - len(images)} duplicate image id(s)")
    categories = sorted(data.get("categories", []), key=lambda c: int(c["id"]))
    by_cat = {int(c["id"]): ClassStats(int(c["id"]), str(c.get("name", c["id"]))) for c in categories}
    images_of: dict[int, set[int]] = {c: set() for c in by_cat}
    annotated: set[int] = set()
    unknown_image = unknown_cat = empty_box = outside = 0
    for ann in data.get("annotations", []):
        image_id, cat_id = int(ann.get("image_id", -1)), int(ann.get("category_id", -1))
        if image_id not in images:
            unknown_image += 1
            continue
        if cat_id not in by_cat:
            unknown_cat += 1
            continue
        annotated.add(image_id)
        cls = by_cat[cat_id]
        if ann.get("iscrowd", 0):
            cls.crowd += 1
            stats.crowd += 1
            continue
        cls.instances += 1
        stats.instances += 1
        images_of[cat_id].add(image_id)
        size = _size_name(_area(ann))
        setattr(cls, size, getattr(cls, size) + 1)
        stats.sizes[size] += 1
        x, y, w, h = (float(v) for v in ann.get("bbox", (0, 0, 0, 0)))
        if w < 1 or h < 1:
            empty_box += 1
        im = images[image_id]
        if (
            x < -0.5
            or y < -0.5
            or x + w > float(im.get("width", x + w)) + 0.5
            or y + h > float(im.get("height", y + h)) + 0.5
        ):
            outside += 1
    for cat_id, cls in by_cat.items():
        cls.images = len(images_of[cat_id])
    stats.classes = list(by_cat.values())
    stats.images_without_annotations = stats.images - len(annotated)
    for count, what in (
        (unknown_image, "annotation(s) of image ids not in 'images'"),
        (unknown_cat, "annotation(s) of category ids not in 'categories'"),
        (empty_box, "box(es) narrower or lower than 1 pixel (skipped in training)"),
        (outside, "box(es) reaching outside their image"),
    ):
        if count:
            stats.problems.append(f"{count} {what}")
    for cls in stats.classes:
        if cls.instances == 0:
            stats.problems.append(f"class {cls.name!r} (id {cls.category_id}) has no instances")
    sizes = [(int(im.get("width", 0)), int(im.get("height", 0))) for im in images.values()]
    if sizes:
        common = Counter(sizes).most_common(1)[0]
        stats.image_sizes = {
            "min_wh": [min(w for w, _ in sizes), min(h for _, h in sizes)],
            "max_wh": [max(w for w, _ in sizes), max(h for _, h in sizes)],
            "most_common_wh": list(common[0]),
            "most_common_count": common[1],
            "distinct": len(set(sizes)),
        }
    return stats


def format_dataset_stats(stats: DatasetStats) -> str:
    """The statistics as the lines ``gcnet browse`` prints."""
    total = max(1, stats.instances)
    lines = [
        f"{stats.annotation_file}: {stats.images} images ({stats.images_without_annotations} without annotations), "
        f"{stats.instances} instances, {stats.crowd} crowd regions, {len(stats.classes)} classes",
        "object sizes: " + ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in stats.sizes.items()),
    ]
    if stats.image_sizes:
        s = stats.image_sizes
        lines.append(
            f"image sizes (w x h): {s['min_wh'][0]}x{s['min_wh'][1]} to {s['max_wh'][0]}x{s['max_wh'][1]}, "
            f"most often {s['most_common_wh'][0]}x{s['most_common_wh'][1]} ({s['most_common_count']} images, "
            f"{s['distinct']} distinct sizes)"
        )
    width = max([5] + [len(c.name) for c in stats.classes])
    lines.append(
        f"{'class':<{width}} {'id':>5} {'instances':>9} {'share':>6} {'images':>6} "
        f"{'small':>6} {'medium':>6} {'large':>6} {'crowd':>5}"
    )
    for c in stats.classes:
        lines.append(
            f"{c.name:<{width}} {c.category_id:>5} {c.instances:>9} {100 * c.instances / total:>5.1f}% "
            f"{c.images:>6} {c.small:>6} {c.medium:>6} {c.large:>6} {c.crowd:>5}"
        )
    if stats.problems:
        lines.append("problems:")
        lines.extend(f"  {p}" for p in stats.problems[:MAX_PROBLEMS_SHOWN])
        if len(stats.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(stats.problems) - MAX_PROBLEMS_SHOWN} more (all in stats.json)")
    else:
        lines.append("no problems found")
    return "\n".join(lines)


def browse(
    ann_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    limit: int | None = None,
) -> DatasetStats:
    """Statistics of the set and its ground truth drawn on the first ``limit`` images (all by
    default) into ``out_dir`` (PNGs, ``index.html``, ``stats.json``)."""
    if limit is not None and limit < 0:
        raise UserError(f"--limit must be >= 0, got {limit}")
    image_dir, out = Path(image_dir), Path(out_dir)
    if not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: image directory not found")
    data = read_coco_json(ann_file)
    stats = dataset_stats(ann_file, data)
    out.mkdir(parents=True, exist_ok=True)
    names = {c.category_id: c.name for c in stats.classes}
    labels = {c.category_id: i for i, c in enumerate(stats.classes)}
    anns: dict[int, list[dict[str, Any]]] = {}
    for ann in data.get("annotations", []):
        if int(ann.get("category_id", -1)) in names:
            anns.setdefault(int(ann["image_id"]), []).append(ann)
    images = sorted(data.get("images", []), key=lambda im: int(im["id"]))
    figures = []
    missing = 0
    for im in images[:limit]:
        try:
            rgb = load_image(image_dir / im["file_name"])
        except DatasetError:
            missing += 1
            continue
        if (rgb.shape[1], rgb.shape[0]) != (int(im.get("width", rgb.shape[1])), int(im.get("height", rgb.shape[0]))):
            stats.problems.append(
                f"{im['file_name']}: the file is {rgb.shape[1]}x{rgb.shape[0]}, "
                f"the json says {im.get('width')}x{im.get('height')}"
            )
            continue
        own = anns.get(int(im["id"]), [])
        name = f"{int(im['id'])}_{Path(im['file_name']).stem}.png"
        draw_coco(rgb, own, names, labels).save(out / name)
        figures.append(H.figure(name, f"{im['file_name']} (id {im['id']}): {len(own)} annotations"))
    if missing:
        stats.problems.insert(0, f"{missing} image file(s) not found or unreadable in {image_dir}")
    stats.drawn = len(figures)
    (out / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
    summary = "<pre>" + H.esc(format_dataset_stats(stats)) + "</pre>"
    (out / "index.html").write_text(
        H.page(
            f"gcnet browse: {Path(ann_file).name}",
            [("stats", "Statistics", summary), ("images", f"Images ({len(figures)} drawn)", "\n".join(figures))],
        ),
        encoding="utf-8",
    )
    return stats
