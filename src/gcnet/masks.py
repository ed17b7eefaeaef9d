"""Instance masks kept compact (each detection's m x m probability map plus its box) and pasted
into image pixels only when asked.

A full-size bool mask costs H*W bytes per detection: 100 masks of an 8000x6000 photo are 4.8 GB.
:class:`BoxMasks` keeps the 28x28 maps (300 KB for 100) and pastes with the original's paste
(mmdet ``FCNMaskHead._predict_by_feat_single`` / ``_do_paste_mask``): each map is sampled with
``grid_sample`` (bilinear, zero padding, align_corners False) at the image's pixel centres and
thresholded with ``>=``. On CPU the original pastes each mask in a window around its box (the box
grown by 1 px); elsewhere whole images in chunks of at most 1 GiB of float32. For a threshold in
(0, 1] both give the same bits: every pixel outside the window samples at most half of an edge
cell, so it stays below the threshold. That is also why :meth:`BoxMasks.window`, :meth:`~BoxMasks.rle`
and :meth:`~BoxMasks.area` may look at the window only. (Precedent: detectron2's ``ROIMasks``.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor

GPU_CHUNK_BYTES = 1 << 30  # the original's GPU_MEM_LIMIT
# A window is sampled in bands of rows of at most this many pixels: its sampling grid costs 12 bytes
# a pixel (8 for the grid, 4 for the samples), 580 MB for one box covering an 8000x6000 photo.
# Each pixel's sample depends on its own grid point only, so the bands give the same bits.
WINDOW_BAND_PIXELS = 1 << 22


def _check(probs: Tensor, boxes: Tensor, image_shape: tuple[int, int], threshold: float, who: str) -> None:
    if probs.dim() != 3 or probs.shape[1] != probs.shape[2]:
        raise ValueError(f"{who}: mask_probs must be [N, m, m], got {tuple(probs.shape)}")
    if boxes.dim() != 2 or boxes.shape != (probs.shape[0], 4):
        raise ValueError(f"{who}: boxes must be [{probs.shape[0]}, 4] like mask_probs, got {tuple(boxes.shape)}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"{who}: threshold must be in (0, 1], got {threshold}")
    if len(image_shape) != 2 or int(image_shape[0]) <= 0 or int(image_shape[1]) <= 0:
        raise ValueError(f"{who}: image_shape must be positive (H, W), got {image_shape}")


def _sample_window(probs: Tensor, boxes: Tensor, x0: int, y0: int, x1: int, y1: int) -> Tensor:
    """Bilinear samples [N, y1-y0, x1-x0] of ``probs`` [N, 1, m, m] at pixel centres of the window."""
    n = probs.shape[0]
    device = probs.device
    bx0, by0, bx1, by1 = boxes.split(1, dim=1)  # each [N, 1]
    ys = torch.arange(y0, y1, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=device, dtype=torch.float32) + 0.5
    gy = (ys - by0) / (by1 - by0) * 2 - 1  # [N, h]
    gx = (xs - bx0) / (bx1 - bx0) * 2 - 1  # [N, w]
    # A zero-size box divides by zero; the original maps the resulting inf to 0.
    gy = torch.where(torch.isinf(gy), torch.zeros_like(gy), gy)
    gx = torch.where(torch.isinf(gx), torch.zeros_like(gx), gx)
    grid = torch.stack(
        [
            gx[:, None, :].expand(n, gy.shape[1], gx.shape[1]),
            gy[:, :, None].expand(n, gy.shape[1], gx.shape[1]),
        ],
        dim=3,
    )
    out = F.grid_sample(probs, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[:, 0]


def _window_bounds(box: Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the box grown by 1 px and clipped to the image (the original's skip_empty)."""
    bx0, by0, bx1, by1 = (float(v) for v in box)
    x0 = max(int(math.floor(bx0)) - 1, 0)
    y0 = max(int(math.floor(by0)) - 1, 0)
    x1 = min(int(math.ceil(bx1)) + 1, width)
    y1 = min(int(math.ceil(by1)) + 1, height)
    return x0, y0, max(x1, x0), max(y1, y0)


def _paste_window(probs: Tensor, box: Tensor, bounds: tuple[int, int, int, int], threshold: float) -> Tensor:
    """bool [y1-y0, x1-x0]: one map ``probs`` [m, m] pasted into the window ``bounds`` of its box [4]."""
    x0, y0, x1, y1 = bounds
    out = torch.zeros((y1 - y0, x1 - x0), dtype=torch.bool, device=probs.device)
    if x1 <= x0 or y1 <= y0:
        return out
    prob, corners = probs.float()[None, None], box[None].to(probs.device, torch.float32)
    rows = max(WINDOW_BAND_PIXELS // (x1 - x0), 1)
    for top in range(y0, y1, rows):
        bottom = min(top + rows, y1)
        out[top - y0 : bottom - y0] = _sample_window(prob, corners, x0, top, x1, bottom)[0] >= threshold
    return out


def paste_masks(
    mask_probs: Tensor,
    boxes: Tensor,
    image_shape: tuple[int, int],
    threshold: float = 0.5,
    *,
    windowed: bool | None = None,
    chunk_bytes: int = GPU_CHUNK_BYTES,
) -> Tensor:
    """Paste probability maps [N, m, m] into boxes [N, 4] of an (H, W) image -> bool [N, H, W].

    ``windowed`` None picks the original's choice: a tight window per mask on CPU, whole-image
    chunks of at most ``chunk_bytes`` float32 bytes elsewhere. Both give identical masks.
    """
    _check(mask_probs, boxes, image_shape, threshold, "paste_masks")
    height, width = int(image_shape[0]), int(image_shape[1])
    device = mask_probs.device
    n = mask_probs.shape[0]
    out = torch.zeros((n, height, width), dtype=torch.bool, device=device)
    if n == 0:
        return out
    boxes = boxes.to(device=device, dtype=torch.float32)
    if windowed is None:
        windowed = device.type == "cpu"

    if windowed:
        corners = boxes.detach().cpu()
        for i in range(n):
            x0, y0, x1, y1 = bounds = _window_bounds(corners[i], height, width)
            out[i, y0:y1, x0:x1] = _paste_window(mask_probs[i], boxes[i], bounds, threshold)
        return out

    if chunk_bytes <= 0:
        raise ValueError(f"paste_masks: chunk_bytes must be positive, got {chunk_bytes}")
    probs = mask_probs.float()[:, None]
    num_chunks = min(max(math.ceil(n * height * width * 4 / chunk_bytes), 1), n)
    for inds in torch.arange(n, device=device).chunk(num_chunks):
        out[inds] = _sample_window(probs[inds], boxes[inds], 0, 0, width, height) >= threshold
    return out


def row_index(index: Tensor | slice | Sequence[int] | int, n: int, device: torch.device, who: str) -> Tensor | slice:
    """``index`` of rows 0..n-1 as a slice or a bool / int64 tensor on ``device``; an int becomes a
    length-1 slice, so subsets keep their dimension (detectron2's ``Instances`` convention)."""
    if isinstance(index, int):
        if not -n <= index < n:
            raise IndexError(f"{who}: index {index} out of range for {n} rows")
        return slice(index % n, index % n + 1)
    if isinstance(index, slice):
        return index
    rows = torch.as_tensor(index, device=device)
    return rows if rows.dtype == torch.bool else rows.long()


def _rle_counts(x0: int, y0: int, window: np.ndarray, height: int, width: int) -> list[int]:
    """Uncompressed COCO RLE counts (column-major runs, zeros first) of an (H, W) mask that is
    ``window`` [h, w] at (x0, y0) and False elsewhere, computed from the window alone (1 byte a
    window pixel, plus 8 per run)."""
    h, w = window.shape
    total = height * width
    if h == 0 or w == 0:
        return [total]
    # The window in column-major order, each column but the last followed by one zero that stands
    # for the H - h zeros between it and the next column (none needed when h == H).
    step = h + 1 if h < height else h
    columns = np.zeros((w, step), dtype=np.uint8)
    columns[:, :h] = window.T
    stream = columns.reshape(-1)[: (w - 1) * step + h]
    edges = np.concatenate([[0], np.flatnonzero(stream[1:] != stream[:-1]) + 1, [stream.shape[0]]])
    # stream index s -> pixel index of the whole mask (a sentinel's run ends at its column's end)
    position = (edges // step) * height + (edges % step)
    lengths = np.diff(position).tolist()
    lead = x0 * height + y0
    trail = total - lead - int(position[-1])
    first_is_one = bool(stream[0])
    counts = [lead, *lengths] if first_is_one else [lead + lengths[0], *lengths[1:]]
    last_is_one = (len(lengths) % 2 == 1) == first_is_one
    if not last_is_one:
        counts[-1] += trail
    elif trail:
        counts.append(trail)
    return counts


@dataclass
class BoxMasks:
    """Instance masks kept as each detection's m x m probability map plus its box in image pixels,
    pasted to pixels only when asked, with the original's paste (bit-identical to pasting at once).

    ``probs`` float [N, m, m] (the label channel's probabilities), ``boxes`` float [N, 4] xyxy in
    pixels of the ``image_shape`` (H, W) image; a pixel is in the mask when its sample >= ``threshold``.
    """

    probs: Tensor
    boxes: Tensor
    image_shape: tuple[int, int]
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check(self.probs, self.boxes, self.image_shape, self.threshold, "BoxMasks")
        self.image_shape = (int(self.image_shape[0]), int(self.image_shape[1]))

    def __len__(self) -> int:
        return int(self.probs.shape[0])

    def __repr__(self) -> str:  # the maps themselves would fill a screen
        m = self.probs.shape[-1]
        h, w = self.image_shape
        return f"BoxMasks({len(self)} maps of {m}x{m} in a {h}x{w} image, threshold={self.threshold})"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W) of :meth:`full`, without pasting."""
        return len(self), self.image_shape[0], self.image_shape[1]

    @property
    def device(self) -> torch.device:
        return self.probs.device

    def __getitem__(self, index: Tensor | slice | Sequence[int] | int) -> BoxMasks:
        """The masks at ``index`` (an int keeps a length-1 BoxMasks, as detectron2's ``Instances``)."""
        index = row_index(index, len(self), self.probs.device, "BoxMasks")
        box_index = index.to(self.boxes.device) if isinstance(index, Tensor) else index
        return BoxMasks(self.probs[index], self.boxes[box_index], self.image_shape, self.threshold)

    def to(self, device: torch.device | str) -> BoxMasks:
        return BoxMasks(self.probs.to(device), self.boxes.to(device), self.image_shape, self.threshold)

    def full(self) -> Tensor:
        """bool [N, H, W] (the only method that allocates N*H*W)."""
        return paste_masks(self.probs, self.boxes, self.image_shape, self.threshold)

    def window(self, i: int) -> tuple[int, int, Tensor]:
        """(x0, y0, bool [h, w]): mask ``i`` in its box grown by 1 px and clipped to the image; every
        pixel outside the window is False. [0, 0]-sized (or 0-wide) for a box off the image."""
        bounds = _window_bounds(self.boxes[i].detach().cpu(), *self.image_shape)
        return bounds[0], bounds[1], _paste_window(self.probs[i], self.boxes[i], bounds, self.threshold)

    def mask(self, i: int) -> Tensor:
        """bool [H, W] of mask ``i``."""
        x0, y0, win = self.window(i)
        out = torch.zeros(self.image_shape, dtype=torch.bool, device=win.device)
        out[y0 : y0 + win.shape[0], x0 : x0 + win.shape[1]] = win
        return out

    def rle(self) -> list[dict[str, Any]]:
        """COCO compressed RLE (``size`` [H, W], str ``counts``) of each mask, from its window only."""
        height, width = self.image_shape
        out = []
        for i in range(len(self)):
            x0, y0, win = self.window(i)
            counts = _rle_counts(x0, y0, win.cpu().numpy(), height, width)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
            rle["counts"] = rle["counts"].decode("ascii")
            out.append(rle)
        return out

    def area(self) -> Tensor:
        """int64 [N]: the pixels of each mask."""
        return torch.tensor([int(self.window(i)[2].sum()) for i in range(len(self))], dtype=torch.int64)

    def hflip(self) -> BoxMasks:
        """The masks of the horizontally flipped image: maps mirrored, boxes x -> W - x.

        Equal to ``full().flip(-1)`` except where a pixel's sample lies within float rounding of
        the threshold (the mirrored coordinates round differently)."""
        width = self.image_shape[1]
        x0, y0, x1, y1 = self.boxes.unbind(1)
        boxes = torch.stack([width - x1, y0, width - x0, y1], dim=1)
        return BoxMasks(self.probs.flip(-1), boxes, self.image_shape, self.threshold)

    def shifted(self, dx: float, dy: float, image_shape: tuple[int, int]) -> BoxMasks:
        """The masks moved by (dx, dy) into an ``image_shape`` image (a tile into its whole image).

        Pastes as the original pasted at that offset; bit-identical when the boxes and the offset
        add exactly in float32 (e.g. integer offsets and boxes on a 1/2^k grid), else up to
        pixels within rounding of the threshold."""
        offset = torch.tensor([dx, dy, dx, dy], dtype=self.boxes.dtype, device=self.boxes.device)
        return BoxMasks(self.probs, self.boxes + offset, image_shape, self.threshold)

    @staticmethod
    def cat(parts: Sequence[BoxMasks]) -> BoxMasks:
        """The masks of ``parts`` in order; they must share image_shape, map size and threshold.

        An empty list has no image shape to take, so it is an error (give an empty BoxMasks)."""
        if not parts:
            raise ValueError("BoxMasks.cat: no parts (the image shape is unknown); pass at least one, even empty")
        first = parts[0]
        for p in parts[1:]:
            if p.image_shape != first.image_shape or p.probs.shape[1:] != first.probs.shape[1:]:
                raise ValueError(
                    f"BoxMasks.cat: parts differ: image {p.image_shape} maps {tuple(p.probs.shape[1:])} vs "
                    f"image {first.image_shape} maps {tuple(first.probs.shape[1:])}"
                )
            if p.threshold != first.threshold:
                raise ValueError(f"BoxMasks.cat: thresholds differ: {p.threshold} vs {first.threshold}")
        return BoxMasks(
            torch.cat([p.probs for p in parts]), torch.cat([p.boxes for p in parts]), first.image_shape, first.threshold
        )
