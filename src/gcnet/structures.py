"""Small typed containers that flow between the data pipeline, the detector and evaluation.

Plain tensors inside, so they are easy to move between devices, compile and export.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from gcnet.masks import BoxMasks

DEFAULT_SIZE_DIVISOR = 32


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


@dataclass
class Detections:
    """Detections of one image: ``boxes`` float [N, 4] xyxy, ``scores`` [N], ``labels`` int64 [N]
    (0-based), ``masks`` compact :class:`~gcnet.masks.BoxMasks` in the original image (or None for
    box-only output): ``masks.full()`` is the bool [N, H, W] array, ``masks.rle()`` COCO RLEs."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: BoxMasks | None = None
    class_names: tuple[str, ...] = field(default=(), repr=False)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

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
