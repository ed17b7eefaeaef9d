"""The original's image pipeline: keep-ratio resize, horizontal flip, normalise (pad is in collate).

Resize follows mmcv ``imrescale`` + ``cv2.resize(..., INTER_LINEAR)`` on uint8. We reproduce
OpenCV's fixed-point bilinear kernel with torch integer ops (any device):

* source coordinate ``(d + 0.5) * scale - 0.5`` computed in double and cast to float32, where
  ``scale = 1 / (out / in)`` as OpenCV computes it; out-of-range columns take the border pixel
  with weight (1, 0); out-of-range rows keep their weights and only clamp the row index, as
  OpenCV does (so a border row's two weights may sum to 2047 or 2049).
* each weight is rounded to 11 fractional bits (``round(w * 2048)``, half to even); the
  horizontal pass sums in int32 exactly; the vertical pass uses OpenCV's SIMD formula
  ``((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16) + 2 >> 2``.
* an exact 2x downscale in both axes becomes OpenCV's INTER_AREA fast path ``(a+b+c+d+2) >> 2``.

Measured against opencv-python-headless 5.0.0.93 (x86-64): bit-exact (max abs difference 0) on
300 random size pairs including up/down-scales and the 2x case. Where ours and OpenCV could still
differ: (1) OpenCV builds whose SIMD width leaves a scalar tail per row use
``(b0*h0 + b1*h1 + 2^21) >> 22`` there, which can differ from the SIMD rounding by 1 level;
(2) builds that dispatch to a vendor kernel (IPP, Carotene on ARM, a custom HAL) may round
differently; (3) neither side anti-aliases when downscaling (INTER_LINEAR has no low-pass), so
there is no difference from that; (4) decoding (Pillow vs OpenCV's libjpeg) is a separate source.
Masks use OpenCV's INTER_NEAREST rule: source index ``floor(d * scale)`` clamped to the last pixel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gcnet.data.config import DataConfig
from gcnet.structures import ImageMeta, round_up_shape

ArrayLike = np.ndarray | Tensor

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def rescale_size(width: int, height: int, scale: tuple[int, int]) -> tuple[int, int]:
    """New (w, h) fitting ``scale`` = (max long edge, max short edge), as mmcv ``rescale_size``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"rescale_size: image size must be positive, got w={width}, h={height}")
    max_long, max_short = max(scale), min(scale)
    factor = min(max_long / max(width, height), max_short / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _linear_taps(
    in_size: int, out_size: int, device: torch.device, reset_border: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """OpenCV INTER_LINEAR source indices and 11-bit fixed-point weights along one axis.

    OpenCV resets the weight to (1, 0) for out-of-range columns (``reset_border``) but keeps the
    computed weights for out-of-range rows, only clamping the row indices.
    """
    scale = 1.0 / (out_size / in_size)
    pos = ((torch.arange(out_size, dtype=torch.float64, device=device) + 0.5) * scale - 0.5).float()
    idx = torch.floor(pos)
    frac = pos - idx
    idx = idx.long()
    if reset_border:
        outside = (idx < 0) | (idx >= in_size - 1)
        frac = torch.where(outside, torch.zeros_like(frac), frac)
    w0 = torch.round((1.0 - frac) * _COEF_SCALE).to(torch.int32)
    w1 = torch.round(frac * _COEF_SCALE).to(torch.int32)
    return idx.clamp(0, in_size - 1), (idx + 1).clamp(0, in_size - 1), w0, w1


def _resize_linear_u8(img: Tensor, out_h: int, out_w: int) -> Tensor:
    """uint8 ``[H, W, C]`` -> uint8 ``[out_h, out_w, C]`` as OpenCV INTER_LINEAR."""
    in_h, in_w = int(img.shape[0]), int(img.shape[1])
    if (in_h, in_w) == (out_h, out_w):
        return img.clone()
    if in_h == 2 * out_h and in_w == 2 * out_w:  # OpenCV switches to its INTER_AREA fast path
        x = img.to(torch.int32)
        s = x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]
        return ((s + 2) >> 2).to(torch.uint8)
    x0, x1, a0, a1 = _linear_taps(in_w, out_w, img.device, reset_border=True)
    y0, y1, b0, b1 = _linear_taps(in_h, out_h, img.device, reset_border=False)
    rows = torch.unique(torch.cat([y0, y1]))
    # horizontal pass on the rows that are used, exact int32 (values < 2^19)
    remap = torch.full((in_h,), -1, dtype=torch.long, device=img.device)
    remap[rows] = torch.arange(rows.numel(), device=img.device)
    part = img.index_select(0, rows).to(torch.int32)  # widen only the used rows (a 8000x6000 photo: ~2%)
    horiz = part.index_select(1, x0) * a0[None, :, None] + part.index_select(1, x1) * a1[None, :, None]
    horiz >>= 4
    # vertical pass with OpenCV's SIMD rounding, in place to keep the big temporaries few
    out = horiz.index_select(0, remap[y0]).mul_(b0[:, None, None]).bitwise_right_shift_(16)
    out += horiz.index_select(0, remap[y1]).mul_(b1[:, None, None]).bitwise_right_shift_(16)
    out.add_(2).bitwise_right_shift_(2)
    return out.clamp_(0, 255).to(torch.uint8)


def _as_hwc_tensor(image: ArrayLike, name: str) -> Tensor:
    if isinstance(image, np.ndarray):  # read-only arrays (e.g. np.asarray of a PIL image) are copied
        image = np.ascontiguousarray(image) if image.flags.writeable else np.array(image)
    tensor = torch.from_numpy(image) if isinstance(image, np.ndarray) else image
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(image).__name__}")
    if tensor.dtype != torch.uint8 or tensor.ndim != 3 or tensor.shape[2] != 3:
        raise ValueError(f"{name}: expected a uint8 [H, W, 3] image, got {tuple(tensor.shape)} {tensor.dtype}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name}: image has an empty side {tuple(tensor.shape)}")
    return tensor


def resize_to(image: ArrayLike, size: tuple[int, int]) -> ArrayLike:
    """Resize a uint8 HWC image to ``size`` = (h, w) with OpenCV-like INTER_LINEAR; same type out."""
    tensor = _as_hwc_tensor(image, "resize_to(image)")
    out = _resize_linear_u8(tensor, int(size[0]), int(size[1]))
    return out.cpu().numpy() if isinstance(image, np.ndarray) else out


def resize_keep_ratio(image: ArrayLike, scale: tuple[int, int] = (1333, 800)) -> tuple[ArrayLike, tuple[float, float]]:
    """Keep-ratio resize to fit ``scale``; returns the image and (w_scale, h_scale) = new / old."""
    tensor = _as_hwc_tensor(image, "resize_keep_ratio(image)")
    h, w = int(tensor.shape[0]), int(tensor.shape[1])
    new_w, new_h = rescale_size(w, h, scale)
    out = resize_to(image, (new_h, new_w))
    return out, (new_w / w, new_h / h)


def resize_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize of ``[N, H, W]`` masks to ``size`` = (h, w), OpenCV INTER_NEAREST indices."""
    if masks.ndim != 3:
        raise ValueError(f"resize_masks: expected [N, H, W] masks, got {tuple(masks.shape)}")
    in_h, in_w = int(masks.shape[1]), int(masks.shape[2])
    out_h, out_w = int(size[0]), int(size[1])
    if (in_h, in_w) == (out_h, out_w):
        return masks.clone()

    def index(in_size: int, out_size: int) -> Tensor:
        scale = 1.0 / (out_size / in_size)
        pos = torch.floor(torch.arange(out_size, dtype=torch.float64, device=masks.device) * scale)
        return pos.long().clamp_(0, in_size - 1)

    return masks.index_select(1, index(in_h, out_h)).index_select(2, index(in_w, out_w))


def hflip_image(image: Tensor, channels_last: bool = False) -> Tensor:
    """Mirror an image left-right: ``[C, H, W]`` by default, ``[H, W, C]`` with ``channels_last``."""
    if image.ndim != 3:
        raise ValueError(f"hflip_image: expected a 3-d image, got {tuple(image.shape)}")
    return image.flip(1) if channels_last else image.flip(2)


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes in an image of ``width``: x1' = w - x2, x2' = w - x1 (mmdet, no -1)."""
    flipped = boxes.clone()
    flipped[..., 0] = width - boxes[..., 2]
    flipped[..., 2] = width - boxes[..., 0]
    return flipped


def hflip_masks(masks: Tensor) -> Tensor:
    """Mirror ``[N, H, W]`` masks left-right."""
    return masks.flip(-1)


def normalize(image: ArrayLike, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """uint8 HWC RGB -> float32 ``[3, H, W]`` as (x - mean) / std (the original's RGB statistics)."""
    tensor = _as_hwc_tensor(image, "normalize(image)")
    if len(mean) != 3 or len(std) != 3 or any(s == 0 for s in std):
        raise ValueError(f"normalize: need 3 means and 3 non-zero stds, got mean={mean}, std={std}")
    chw = tensor.permute(2, 0, 1).contiguous().to(torch.float32)  # transpose as uint8: cheaper
    m = torch.tensor(mean, dtype=torch.float32, device=chw.device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=chw.device)[:, None, None]
    return chw.sub_(m).div_(s)


def preprocess(
    image: ArrayLike, cfg: DataConfig = DataConfig(), image_id: int | None = None, file_name: str | None = None
) -> tuple[Tensor, ImageMeta]:
    """Test pipeline of the original: keep-ratio resize, normalise; padding is left to ``collate``."""
    tensor = _as_hwc_tensor(image, "preprocess(image)")
    h, w = int(tensor.shape[0]), int(tensor.shape[1])
    resized, (sw, sh) = resize_keep_ratio(tensor, cfg.scale)
    meta = ImageMeta(
        img_shape=(int(resized.shape[0]), int(resized.shape[1])),
        ori_shape=(h, w),
        scale_factor=(sw, sh),
        flip=False,
        image_id=image_id,
        file_name=file_name,
    )
    return normalize(resized, cfg.mean, cfg.std), meta


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """(h, w) rounded up to a multiple of ``divisor`` (the original's Pad(size_divisor=32))."""
    return round_up_shape((height, width), divisor)
