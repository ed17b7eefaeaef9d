"""Small typed containers that flow between the data pipeline, the detector and evaluation.

Plain tensors inside, so they are easy to move between devices, compile and export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gcnet.image_io import load_image
from gcnet.masks import BoxMasks, row_index
from gcnet.models.config import COCO_CLASSES
from gcnet.visualise import draw_detections, save_visualisation

DEFAULT_SIZE_DIVISOR = 32

# COCO's ids of its 80 classes (COCO_CLASSES order): the 91-id list of the 2014 paper, less 11 unused
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(i for i in range(1, 91) if i not in {12, 26, 29, 30, 45, 66, 68, 69, 71, 83})

LabelMap = Sequence[int] | Mapping[int, int]  # 0-based label -> COCO category id


def category_ids_for(class_names: Sequence[str]) -> list[int]:
    """The category id of each class: COCO's own ids for the 80 COCO classes (the zoo models; they
    are not 1..80), 1..N in class order for any other class list."""
    if tuple(class_names) == COCO_CLASSES:
        return list(COCO_CATEGORY_IDS)
    return list(range(1, len(class_names) + 1))


def round_up_shape(shape: tuple[int, int], divisor: int) -> tuple[int, int]:
    """(h, w) rounded up to multiples of ``divisor``; unchanged when ``divisor`` <= 0 (no padding)."""
    if divisor <= 0:
        return int(shape[0]), int(shape[1])
    return -(-int(shape[0]) // divisor) * divisor, -(-int(shape[1]) // divisor) * divisor


@dataclass(frozen=True)
class ImageMeta:
    """What the detector must know about one image of a padded batch.

    ``img_shape`` is the resized, unpadded (h, w): boxes are clipped to it.
    ``ori_shape`` is the original (h, w): boxes and masks are returned in it.
    ``scale_factor`` is (w_scale, h_scale) = resized / original, as the original stores it.
    ``pad_shape`` is ``img_shape`` rounded up to the data pipeline's size divisor (the image's own
    padding, not the batch's): the RPN loss ignores anchors beyond it, as the original's
    ``valid_flags`` do. ``collate`` sets it from its ``size_divisor``; left out, it is ``img_shape``
    rounded up to :data:`DEFAULT_SIZE_DIVISOR` (the original's ``Pad(size_divisor=32)``), and
    ``dataclasses.replace(meta, pad_shape=None)`` derives it again that way.
    """

    img_shape: tuple[int, int]
    ori_shape: tuple[int, int]
    scale_factor: tuple[float, float]
    flip: bool = False
    image_id: int | None = None
    file_name: str | None = None
    pad_shape: tuple[int, int] = None  # type: ignore[assignment]  # None: derived in __post_init__

    def __post_init__(self) -> None:
        if self.pad_shape is None:
            object.__setattr__(self, "pad_shape", round_up_shape(self.img_shape, DEFAULT_SIZE_DIVISOR))
        elif any(p < s for p, s in zip(self.pad_shape, self.img_shape)):
            raise ValueError(f"ImageMeta: pad_shape {self.pad_shape} is smaller than img_shape {self.img_shape}")


@dataclass
class Targets:
    """Ground truth of one image in resized-image coordinates (what training consumes).

    ``boxes``: float [N, 4] xyxy; ``labels``: int64 [N] in 0..num_classes-1;
    ``masks``: uint8 [N, h, w] bitmaps at the resized (unpadded or padded) image size.
    """

    boxes: Tensor
    labels: Tensor
    masks: Tensor | None = None

    def to(self, device: torch.device | str) -> Targets:
        return Targets(
            self.boxes.to(device, non_blocking=True),
            self.labels.to(device, non_blocking=True),
            None if self.masks is None else self.masks.to(device, non_blocking=True),
        )

    def pin_memory(self) -> Targets:
        return Targets(
            self.boxes.pin_memory(),
            self.labels.pin_memory(),
            None if self.masks is None else self.masks.pin_memory(),
        )


Index = Tensor | slice | Sequence[int] | int


@dataclass
class Detections:
    """Detections of one image: ``boxes`` float [N, 4] xyxy, ``scores`` [N], ``labels`` int64 [N]
    (0-based), ``masks`` compact :class:`~gcnet.masks.BoxMasks` in the original image (or None for
    box-only output): ``masks.full()`` is the bool [N, H, W] array, ``masks.rle()`` COCO RLEs.

    ``image`` (uint8 HxWx3 RGB) or ``path`` (its file) is what :meth:`plot` draws on when given no
    image; :func:`gcnet.predict` sets one of them.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: BoxMasks | None = None
    class_names: tuple[str, ...] = field(default=(), repr=False)
    image: np.ndarray | None = field(default=None, repr=False)
    path: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def __getitem__(self, index: Index) -> Detections:
        """The detections at ``index`` (bool mask, int indices, slice; an int keeps a length-1
        Detections, as detectron2's ``Instances``); masks follow, names and image stay."""
        index = row_index(index, len(self), self.boxes.device, "Detections")
        return replace(
            self,
            boxes=self.boxes[index],
            scores=self.scores[index],
            labels=self.labels[index],
            masks=None if self.masks is None else self.masks[index],
        )

    def filter(self, score_thr: float | None = None, labels: Sequence[int] | None = None) -> Detections:
        """The detections scoring >= ``score_thr`` (None: any) whose label is in ``labels`` (None: any)."""
        keep = torch.ones(len(self), dtype=torch.bool, device=self.scores.device)
        if score_thr is not None:
            keep &= self.scores >= score_thr
        if labels is not None:
            wanted = torch.as_tensor(list(labels), dtype=self.labels.dtype, device=self.labels.device)
            keep &= torch.isin(self.labels, wanted)
        return self[keep]

    def numpy(self, masks: bool = False) -> dict[str, np.ndarray]:
        """``boxes`` float32 [N, 4], ``scores`` float32 [N], ``labels`` int64 [N] and, with
        ``masks=True``, ``masks`` bool [N, H, W]: that one costs N*H*W bytes (100 masks of an
        8000x6000 photo are 4.8 GB); prefer ``self.masks.rle()`` or ``self.masks.window(i)``."""
        out = {
            "boxes": self.boxes.detach().cpu().float().numpy(),
            "scores": self.scores.detach().cpu().float().numpy(),
            "labels": self.labels.detach().cpu().long().numpy(),
        }
        if masks:
            if self.masks is None:
                raise ValueError("Detections.numpy: masks=True but these detections have no masks")
            out["masks"] = self.masks.full().cpu().numpy()
        return out

    def to_coco(self, image_id: int, category_ids: LabelMap | None = None) -> list[dict[str, Any]]:
        """COCO results records, one per detection: ``image_id``, ``category_id``, ``bbox`` xywh
        (no +1, as the original), ``score`` and, with masks, ``segmentation`` (compressed RLE, str
        counts, from each box window). ``category_ids[label]`` maps 0-based labels (a sequence or a
        mapping); None: the COCO ids for the 80 COCO classes, else 1..N in class order (label + 1
        when there are no class names)."""
        if category_ids is None:
            category_ids = category_ids_for(self.class_names) if self.class_names else None
        boxes = self.boxes.detach().to("cpu", torch.float64).tolist()
        scores = self.scores.detach().to("cpu", torch.float64).tolist()
        labels = [int(v) for v in self.labels.detach().cpu()]
        rles = self.masks.rle() if self.masks is not None else None
        records: list[dict[str, Any]] = []
        for k, (label, (x1, y1, x2, y2)) in enumerate(zip(labels, boxes)):
            try:
                cat_id = label + 1 if category_ids is None else int(category_ids[label])
            except (IndexError, KeyError):
                raise ValueError(f"Detections.to_coco: label {label} has no category id") from None
            item: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": cat_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(scores[k]),
            }
            if rles is not None:
                item["segmentation"] = rles[k]
            records.append(item)
        return records

    def plot(self, image: np.ndarray | None = None, score_thr: float = 0.0, mask_alpha: float = 0.45) -> np.ndarray:
        """The drawing (uint8 HxWx3 RGB): masks, boxes, names and scores of the detections scoring
        >= ``score_thr``, on ``image``, else ``self.image``, else ``self.path`` decoded."""
        return np.array(draw_detections(self._canvas(image), self, score_thr, mask_alpha))  # writable

    def save(
        self,
        path: str | os.PathLike[str],
        image: np.ndarray | None = None,
        score_thr: float = 0.0,
        mask_alpha: float = 0.45,
    ) -> Path:
        """Write :meth:`plot`'s drawing to ``path`` (format from its suffix); returns the path."""
        return save_visualisation(self._canvas(image), self, path, score_thr, mask_alpha)

    def _canvas(self, image: np.ndarray | None) -> np.ndarray:
        if image is not None:
            return image
        if self.image is not None:
            return self.image
        if self.path is not None:
            return load_image(self.path)
        raise ValueError("Detections.plot: no image to draw on (pass image=, or set .image or .path)")

    def to(self, device: torch.device | str) -> Detections:
        return replace(
            self,
            boxes=self.boxes.to(device),
            scores=self.scores.to(device),
            labels=self.labels.to(device),
            masks=None if self.masks is None else self.masks.to(device),
        )

    @property
    def label_names(self) -> list[str]:
        """Class name of each detection (empty strings when the model carries no names)."""
        if not self.class_names:
            return ["" for _ in range(len(self))]
        return [self.class_names[int(i)] for i in self.labels]


@dataclass
class Batch:
    """A collated batch: normalised images padded to a common size, plus per-image data."""

    images: Tensor
    metas: list[ImageMeta]
    targets: list[Targets] | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=True),
            self.metas,
            None if self.targets is None else [t.to(device) for t in self.targets],
        )

    def pin_memory(self) -> Batch:
        """Page-locked copy, called by the DataLoader's ``pin_memory=True`` (it only pins objects
        with this method), so that ``to(cuda, non_blocking=True)`` overlaps the copy with compute."""
        return Batch(
            self.images.pin_memory(),
            self.metas,
            None if self.targets is None else [t.pin_memory() for t in self.targets],
        )
