"""Image decoding: files -> uint8 HWC RGB arrays, as the original's OpenCV ``imread(IMREAD_COLOR)``.

We decode with Pillow and bring every mode it opens to the 8-bit RGB that OpenCV's ``IMREAD_COLOR``
gives for the same file (``tests/test_image_io.py`` checks each against cv2):

* ``1 L LA P PA RGB RGBA``: Pillow's own conversion; alpha is dropped, never composited. A TIFF
  with unassociated alpha is premultiplied first, as libtiff's RGBA reader (OpenCV's) does.
* ``CMYK``: JPEG with OpenCV's integer formula ``(255 - K) - (C * (255 - K) >> 8)`` (Adobe-inverted
  or not, Pillow hands us the same C, K); other formats (TIFF) with Pillow's, which is libtiff's.
* ``I;16*`` (16-bit PNG / TIFF) and ``I`` (16-bit PGM): the high byte, ``v >> 8``, as OpenCV
  strips 16-bit samples (values outside 0..65535 are clipped first).
* ``F`` (float TIFF / PFM): OpenCV's ``IMREAD_COLOR`` reads no 32-bit samples at all, so we take
  its own float -> 8-bit rule (``convertTo``: round half to even, saturate to 0..255).

The EXIF orientation tag is applied (the steps of Pillow's ``exif_transpose``) as OpenCV does. Left as they are:
JPEG pixels may differ by a level or two between libjpeg builds (Pillow vs the OpenCV wheel), and
16-bit RGB TIFF / PPM files, which Pillow reduces to 8 bits itself, by at most one level.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_WORKER_PREFIX = "Caught DatasetError"  # how torch's DataLoader re-raises an error from a worker
_TIFF_EXTRA_SAMPLES = 338
EXIF_ORIENTATION = 0x0112  # the EXIF tag both decoders turn the image by
_UNASSOCIATED_ALPHA = 2


class DatasetError(ValueError):
    """A dataset file (annotation json or image) is missing or malformed; the message names it.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``DatasetError(text)``
    where ``text`` is the worker's whole traceback: the message is cut back to the original line
    (the traceback is kept in :attr:`worker_traceback`), so a loader error reads as one line too.
    """

    def __init__(self, message: str = "") -> None:
        self.worker_traceback = ""
        if message.startswith(_WORKER_PREFIX) and "DatasetError: " in message:
            self.worker_traceback = message
            message = message.rstrip().rsplit("DatasetError: ", 1)[1]
        super().__init__(message)


def _unassociated_alpha_tiff(img: Image.Image) -> bool:
    if img.format != "TIFF" or img.mode != "RGBA":
        return False
    extra = getattr(img, "tag_v2", {}).get(_TIFF_EXTRA_SAMPLES, ())
    extra = extra if isinstance(extra, tuple) else (extra,)
    return _UNASSOCIATED_ALPHA in extra


def _gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[:, :, None], 3, axis=2)


def to_opencv_rgb(img: Image.Image) -> np.ndarray:
    """A Pillow image (any mode) as the uint8 ``[H, W, 3]`` RGB that OpenCV's ``IMREAD_COLOR``
    reads from its file (see the module docstring); orientation is not applied here."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(img).astype(np.int64)
        return _gray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
    if mode == "F":
        values = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
        return _gray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if mode == "CMYK" and img.format == "JPEG":
        cmyk = np.asarray(img).astype(np.int32)
        white = 255 - cmyk[:, :, 3:]
        return (white - ((cmyk[:, :, :3] * white) >> 8)).astype(np.uint8)
    if _unassociated_alpha_tiff(img):
        rgba = np.asarray(img).astype(np.int32)
        return ((rgba[:, :, :3] * rgba[:, :, 3:] + 127) // 255).astype(np.uint8)
    if mode in ("RGBa", "La"):  # premultiplied already: OpenCV keeps the stored colours
        stored = np.asarray(img)
        return np.ascontiguousarray(stored[:, :, :3]) if mode == "RGBa" else _gray(stored[:, :, 0])
    return np.array(img if mode == "RGB" else img.convert("RGB"), dtype=np.uint8)


def _oriented(array: np.ndarray, orientation: int) -> np.ndarray:
    """``array`` turned the way EXIF ``orientation`` says (Pillow's ``exif_transpose`` steps, done
    on the decoded array so the format facts of the file were still at hand while decoding)."""
    steps = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    step = steps.get(int(orientation) if isinstance(orientation, int) else 1)
    return array if step is None else step(array)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as a uint8 ``[H, W, 3]`` RGB array with EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    try:
        with Image.open(path) as img:
            array = _oriented(to_opencv_rgb(img), img.getexif().get(EXIF_ORIENTATION, 1))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot decode image ({exc})") from exc
    if array.ndim != 3 or array.shape[2] != 3:
        raise DatasetError(f"{path}: decoded to unexpected shape {array.shape}")
    return np.ascontiguousarray(array)
