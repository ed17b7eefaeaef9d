"""The user-facing inference call: images in (paths, PIL images, arrays), detections out.

The lower entry is the detector itself: ``model(batch_tensor, metas)`` on an already normalised,
padded batch, so results can be compared with the original on the very same input tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from gcnet.config import DataConfig
from gcnet.data import collate, load_image, preprocess
from gcnet.structures import Detections

ImageInput = Union[str, Path, Image.Image, np.ndarray]


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Decode any supported image input to a uint8 HWC RGB array."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"), dtype=np.uint8)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 RGB array, got shape {tuple(image.shape)}")
        if image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB array, got dtype {image.dtype}")
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images: ImageInput | Sequence[ImageInput],
    data_cfg: DataConfig = DataConfig(),
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
) -> list[Detections]:
    """Detect objects in ``images`` with the test pipeline of ``data_cfg``.

    Returns one :class:`Detections` per image, in order: ``boxes`` float xyxy in original-image
    pixels, ``scores``, 0-based ``labels`` (names in ``label_names``) and bool ``masks`` of the
    original image size. Images are batched (up to ``batch_size``) only with images of the same
    padded size, so the results equal one-at-a-time inference; they are decoded a window at a
    time, so long lists do not hold every image in memory. ``dtype`` (``torch.bfloat16`` /
    ``torch.float16``) runs the model under autocast.
    """
    items: list[ImageInput] = list(images) if isinstance(images, (list, tuple)) else [images]  # type: ignore[list-item]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = _model_device(model)
    window = 8 * batch_size
    results: list[Detections | None] = [None] * len(items)
    try:
        for start in range(0, len(items), window):
            samples = [(*preprocess(to_rgb_array(item), data_cfg), None) for item in items[start : start + window]]
            for group in _same_padded_size(samples, data_cfg.size_divisor, batch_size):
                batch = collate([samples[i] for i in group], size_divisor=data_cfg.size_divisor).to(device)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    detections = model(batch.images, batch.metas)
                for i, det in zip(group, detections):
                    results[start + i] = det.to("cpu")
    finally:
        model.train(was_training)
    return results  # type: ignore[return-value]


def _same_padded_size(samples: list, divisor: int, batch_size: int) -> Iterable[list[int]]:
    """Batches of image indices that share one padded size, so that no image is padded beyond its
    own multiple of ``divisor``: batched results then equal one-at-a-time results."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (image, _meta, _) in enumerate(samples):
        h, w = image.shape[-2:]
        groups.setdefault((-(-h // divisor), -(-w // divisor)), []).append(index)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            yield indices[start : start + batch_size]


