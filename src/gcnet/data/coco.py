"""COCO-format instance dataset with the original's train/test pipelines (spec 6.1, 6.2).

Category ids sorted ascending become contiguous labels 0..C-1 (mmdet ``cat2label``). In train
mode images without any annotation entry (unless ``cfg.filter_empty`` is False: then they train as
negatives) or with min(w, h) < ``cfg.min_size`` are dropped (the original's ``filter_empty_gt``: an
image whose entries are all crowd or degenerate stays, and trains with no ground truth: all its
anchors and proposals are negatives); boxes with area <= 0, w < 1, h < 1 or no overlap with the
image are skipped; crowd annotations are not used for training (the original turns them into
ignore boxes, which its assigners never use); polygons of fewer than 3 points are dropped, and an
annotation left with none is skipped (mmdet 3.x ignores it: it would train an empty mask).
``CocoDetection.counts`` says what was dropped or repaired, in one line.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from gcnet.data.config import DataConfig
from gcnet.data.transforms import hflip_boxes, hflip_image, hflip_masks, normalize, resize_keep_ratio, resize_masks
from gcnet.image_io import EXIF_ORIENTATION, DatasetError, load_image
from gcnet.structures import ImageMeta, Targets


@dataclass(frozen=True)
class _Ann:
    box: tuple[float, float, float, float]  # xyxy, original pixels
    label: int
    segmentation: Any


@dataclass
class LoadCounts:
    """What a training set kept, dropped and repaired at load (printed once when training starts)."""

    images: int = 0  # kept for training
    annotations: int = 0  # used for training
    empty_dropped: int = 0  # images without annotation entries, dropped (data.filter_empty)
    empty_kept: int = 0  # ... kept as negatives
    small: int = 0  # images smaller than data.min_size
    degenerate: int = 0  # boxes of no area or outside the image
    no_polygon: int = 0  # annotations without a polygon of >= 3 points
    repaired: int = 0  # annotations that lost polygons of < 3 points
    crowd: int = 0

    def line(self, ann_file: str | os.PathLike[str]) -> str:
        """E.g. ``train.json: 98 training images, 310 annotations; dropped degenerate boxes: 2, ...``."""
        text = f"{ann_file}: {self.images} training images, {self.annotations} annotations"
        if self.empty_kept:
            text += f" ({self.empty_kept} images without annotations kept as negatives)"
        dropped = [
            (self.empty_dropped, "images without annotations (data.filter_empty=False keeps them)"),
            (self.small, "images smaller than data.min_size"),
            (self.degenerate, "degenerate boxes"),
            (self.no_polygon, "annotations whose polygons all have fewer than 3 points"),
            (self.crowd, "crowd annotations"),
        ]
        listed = [f"{what}: {n}" for n, what in dropped if n]
        if listed:
            text += "; dropped " + ", ".join(listed)
        if self.repaired:
            text += f"; repaired (polygons of fewer than 3 points removed): {self.repaired} annotations"
        return text


def _valid_polygons(seg: list[Any]) -> list[list[float]]:
    """The polygons of at least 3 points (x, y pairs): what rasterises to an area."""
    return [p for p in seg if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]


@dataclass(frozen=True)
class _Img:
    image_id: int
    file_name: str
    width: int
    height: int


def _need(entry: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: expected an object, got {type(entry).__name__}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {missing}")


def read_coco_json(ann_file: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a COCO json, raising :class:`DatasetError` naming the file on any I/O or JSON problem."""
    path = Path(ann_file)
    if not path.is_file():
        raise DatasetError(f"{path}: annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    _need(data, ("images", "categories"), f"{path}")
    cats = data["categories"]
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{path}: 'categories' must be a non-empty list")
    for i, c in enumerate(cats):  # checked here: every reader of the categories relies on them
        _need(c, ("id", "name"), f"{path}: categories[{i}]")
        _integer(c, "id", f"{path}: categories[{i}]")
    return data


def _integer(entry: dict[str, Any], key: str, where: str) -> int:
    """``entry[key]`` as an int, or a DatasetError naming the file, the entry and the value."""
    value = entry[key]
    try:
        if isinstance(value, bool):
            raise TypeError
        return int(value)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: '{key}' must be an integer, got {value!r}") from None


def _numbers(values: Any, where: str, what: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {what} must hold numbers, got {values!r}") from None


def _header_orientation(img: Image.Image) -> int:
    """The EXIF orientation from what opening the file read (``getexif`` may decode a PNG whole)."""
    exif = img.info.get("exif")
    if isinstance(exif, bytes):
        tags = Image.Exif()
        tags.load(exif)
        return int(tags.get(EXIF_ORIENTATION, 1))
    return int(getattr(img, "tag_v2", {}).get(EXIF_ORIENTATION, 1))


def _header_problem(path: Path, entry: _Img, size: bool) -> str | None:
    """What is wrong with an image file, from its header alone (Pillow opens lazily: no decode)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if size and _header_orientation(img) in (5, 6, 7, 8):
                w, h = h, w  # decoded upright, as load_image turns it
    except FileNotFoundError:
        return f"{path}: image file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        return f"{path}: not an image file that can be read ({exc})"
    if size and (h, w) != (entry.height, entry.width):
        return f"{path}: image is {w}x{h} but its entry (image id {entry.image_id}) says {entry.width}x{entry.height}"
    return None


def check_image_files(
    entries: Sequence[_Img], image_dir: str | os.PathLike[str], ann_file: str | os.PathLike[str], sizes: bool
) -> None:
    """Every image the annotations reference is there and has a readable header (and, with
    ``sizes``, the size its entry gives: training needs it): checked at load, so a missing or
    foreign file stops the run before any work, not when a loader meets it hours in."""
    folder = Path(image_dir)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image directory not found (the images of {ann_file})")
    problems = [p for e in entries if (p := _header_problem(folder / e.file_name, e, sizes)) is not None]
    if problems:
        more = (
            f" (and {len(problems) - 1} more of the {len(entries)} images of {ann_file})" if len(problems) > 1 else ""
        )
        raise DatasetError(problems[0] + more)


class CocoDetection(Dataset):
    """``(image [3,h,w] normalised, ImageMeta, Targets | None)`` samples from a COCO instances json.

    Targets are in resized-image coordinates: boxes float32 xyxy, labels int64, masks uint8
    ``[N, h, w]`` (pycocotools raster at the original size, then nearest resize). Train mode flips
    with probability ``cfg.flip_prob``: after :meth:`set_epoch` the decision is a function of
    (seed, epoch, image index) alone, so it does not depend on which loader worker draws the image
    (exact resume with workers); before it, torch's global RNG decides.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        cfg: DataConfig = DataConfig(),
        train: bool = False,
        with_masks: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.cfg = cfg
        self.train = train
        self.with_masks = with_masks
        self._epoch_seed: int | None = None
        self.counts = LoadCounts()
        data = read_coco_json(self.ann_file)
        self._read_categories(data)
        images = self._read_images(data)
        anns, annotated = self._read_annotations(data, images)
        order = list(images)
        if train:
            order = [iid for iid in order if self._keep(images[iid], iid in annotated)]
            self.counts.images = len(order)
            self.counts.annotations = sum(len(anns[iid]) for iid in order)
        self._images = [images[iid] for iid in order]
        self._anns = [anns[iid] for iid in order]
        self.image_ids: list[int] = order
        check_image_files(self._images, self.image_dir, self.ann_file, sizes=train)

    def _keep(self, image: _Img, annotated: bool) -> bool:
        """Whether a training image stays (counted in ``self.counts`` either way)."""
        if min(image.width, image.height) < self.cfg.min_size:
            self.counts.small += 1
            return False
        if not annotated:
            if self.cfg.filter_empty:
                self.counts.empty_dropped += 1
                return False
            self.counts.empty_kept += 1
        return True

    def _read_categories(self, data: dict[str, Any]) -> None:
        """Sorted category ids -> contiguous labels (mmdet ``cat2label``) and class names."""
        f = str(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: int(c["id"]))  # checked by read_coco_json
        self.label_to_cat_id: list[int] = [int(c["id"]) for c in cats]
        if len(set(self.label_to_cat_id)) != len(cats):
            raise DatasetError(f"{f}: duplicate category ids {self.label_to_cat_id}")
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.label_to_cat_id)}
        self.class_names: tuple[str, ...] = tuple(str(c["name"]) for c in cats)

    def _read_images(self, data: dict[str, Any]) -> dict[int, _Img]:
        """Image entries by id, in the json's order."""
        f = str(self.ann_file)
        images: dict[int, _Img] = {}
        if not isinstance(data["images"], list):
            raise DatasetError(f"{f}: 'images' must be a list")
        for i, im in enumerate(data["images"]):
            where = f"{f}: images[{i}]"
            _need(im, ("id", "file_name", "width", "height"), where)
            iid = _integer(im, "id", where)
            if iid in images:
                raise DatasetError(f"{f}: images[{i}] repeats image id {iid}")
            images[iid] = _Img(iid, str(im["file_name"]), _integer(im, "width", where), _integer(im, "height", where))
        return images

    def _read_annotations(
        self, data: dict[str, Any], images: dict[int, _Img]
    ) -> tuple[dict[int, list[_Ann]], set[int]]:
        """The usable (non-crowd, non-degenerate) annotations of each image, checked as read, and
        the ids of the images that have any annotation entry at all."""
        f = str(self.ann_file)
        anns: dict[int, list[_Ann]] = {iid: [] for iid in images}
        annotated: set[int] = set()
        raw_anns = data.get("annotations")
        if raw_anns is None:
            if self.train:
                raise DatasetError(f"{f}: missing key 'annotations' (needed for training)")
            raw_anns = []
        if not isinstance(raw_anns, list):
            raise DatasetError(f"{f}: 'annotations' must be a list")
        for i, a in enumerate(raw_anns):
            where = f"{f}: annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
            _need(a, ("image_id", "category_id", "bbox"), where)
            iid, cid = _integer(a, "image_id", where), _integer(a, "category_id", where)
            if iid not in images:
                raise DatasetError(f"{where}: unknown image_id {iid}")
            if cid not in self.cat_id_to_label:
                raise DatasetError(f"{where}: unknown category_id {cid}")
            annotated.add(iid)
            bbox = a["bbox"]
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
                raise DatasetError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
            if a.get("iscrowd", 0):
                self.counts.crowd += 1
                continue
            x, y, w, h = _numbers(bbox, where, "bbox")
            img = images[iid]
            inter_w = max(0.0, min(x + w, img.width) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, img.height) - max(y, 0.0))
            (area,) = _numbers([a.get("area", w * h)], where, "area")
            if inter_w * inter_h == 0 or area <= 0 or w < 1 or h < 1:
                self.counts.degenerate += 1
                continue
            seg = a.get("segmentation")
            if self.train and self.with_masks:  # only training reads the masks
                if not seg:
                    raise DatasetError(
                        f"{where}: no 'segmentation'; for box-only data train a box-only "
                        "model (--set model.with_mask=False)"
                    )
                if isinstance(seg, list):
                    valid = _valid_polygons(seg)
                    if not valid:
                        self.counts.no_polygon += 1
                        continue
                    if len(valid) < len(seg):
                        self.counts.repaired += 1
                        seg = valid
            anns[iid].append(_Ann((x, y, x + w, y + h), self.cat_id_to_label[cid], seg))
        return anns, annotated

    def __len__(self) -> int:
        return len(self._images)

    @property
    def aspect_ratio_flags(self) -> list[int]:
        """1 where w >= h (landscape), else 0: the group of each image for batching."""
        return [1 if im.width >= im.height else 0 for im in self._images]

    def image_info(self, index: int) -> dict[str, Any]:
        im = self._images[index]
        return {"id": im.image_id, "file_name": im.file_name, "width": im.width, "height": im.height}

    def __getitem__(self, index: int) -> tuple[Tensor, ImageMeta, Targets | None]:
        info = self._images[index]
        path = self.image_dir / info.file_name
        image = torch.from_numpy(load_image(path))
        h, w = int(image.shape[0]), int(image.shape[1])
        if self.train and (h, w) != (info.height, info.width):
            raise DatasetError(
                f"{path}: decoded size {(h, w)} differs from {self.ann_file} entry "
                f"image id {info.image_id} size {(info.height, info.width)}"
            )
        resized_image, (sw, sh) = resize_keep_ratio(image, self.cfg.scale)
        resized = cast(Tensor, resized_image)  # a tensor in, a tensor out
        new_h, new_w = int(resized.shape[0]), int(resized.shape[1])
        flip = self.train and self._flip(index)
        targets = self._targets(index, (new_h, new_w), (sw, sh), flip) if self.train else None
        if flip:
            resized = hflip_image(resized, channels_last=True)
        meta = ImageMeta(
            img_shape=(new_h, new_w),
            ori_shape=(h, w),
            scale_factor=(sw, sh),
            flip=flip,
            image_id=info.image_id,
            file_name=info.file_name,
        )
        return normalize(resized, self.cfg.mean, self.cfg.std), meta, targets

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """Make this epoch's random flips a function of (seed, epoch, index)."""
        self._epoch_seed = seed * 1_000_003 + epoch

    def _flip(self, index: int) -> bool:
        if self._epoch_seed is None:
            return bool(torch.rand(()) < self.cfg.flip_prob)
        generator = torch.Generator().manual_seed((self._epoch_seed * 7_368_787 + index) % 2**63)
        return bool(torch.rand((), generator=generator) < self.cfg.flip_prob)

    def _targets(self, index: int, size: tuple[int, int], scale: tuple[float, float], flip: bool) -> Targets:
        info, anns = self._images[index], self._anns[index]
        boxes = torch.tensor([a.box for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes = boxes * torch.tensor([scale[0], scale[1], scale[0], scale[1]], dtype=torch.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size[1])  # mmdet clips to img_shape after resize
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size[0])
        labels = torch.tensor([a.label for a in anns], dtype=torch.int64)
        masks = None
        if self.with_masks:
            raster = (
                np.stack([self._raster(a, info, i) for i, a in enumerate(anns)])
                if anns
                else (np.zeros((0, info.height, info.width), dtype=np.uint8))
            )
            masks = resize_masks(torch.from_numpy(raster), size)
        if flip:
            boxes = hflip_boxes(boxes, size[1])
            masks = None if masks is None else hflip_masks(masks)
        return Targets(boxes=boxes, labels=labels, masks=masks)

    def _raster(self, ann: _Ann, info: _Img, k: int) -> np.ndarray:
        """Polygons / RLE (compressed or not) -> uint8 [H, W] at the image's json size."""
        h, w, seg = info.height, info.width, ann.segmentation
        where = f"{self.ann_file}: image id {info.image_id}, annotation {k}"
        try:
            if isinstance(seg, list):
                polys = _valid_polygons(seg)
                if not polys:
                    return np.zeros((h, w), dtype=np.uint8)
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
            elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
                if [int(v) for v in seg["size"]] != [h, w]:
                    raise DatasetError(f"{where}: RLE size {seg['size']} differs from image size {[h, w]}")
                rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
            else:
                raise DatasetError(f"{where}: segmentation is neither polygons nor RLE")
            with warnings.catch_warnings():  # pycocotools vs numpy 2 'copy' keyword notice
                warnings.simplefilter("ignore", DeprecationWarning)
                return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
        except DatasetError:
            raise
        except Exception as exc:  # pycocotools raises bare Exceptions / TypeErrors on bad input
            raise DatasetError(f"{where}: cannot rasterise segmentation ({exc})") from exc
