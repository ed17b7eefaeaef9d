"""Image decoding: files -> uint8 HWC RGB arrays.

The original decodes with OpenCV (``cv2.IMREAD_COLOR``), which applies the EXIF orientation tag;
we decode with Pillow and apply ``ImageOps.exif_transpose`` so rotated photos come out the same
way up. Pixel values of JPEGs can differ by a few levels between libjpeg builds (Pillow vs the
OpenCV wheel), which is a decoder difference, not a pipeline one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class DatasetError(ValueError):
    """A dataset file (annotation json or image) is missing or malformed; the message names it."""


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as a uint8 ``[H, W, 3]`` RGB array with EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                img = img.convert("RGB")
            array = np.array(img, dtype=np.uint8)  # a writable copy
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"{path}: decoded to unexpected shape {array.shape}")
    return np.ascontiguousarray(array)
