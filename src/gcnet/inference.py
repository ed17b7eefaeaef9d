"""The user-facing inference calls: images in (paths, PIL images, arrays), detections out;
and predicting into a folder (drawings + a json of the detections).

The lower entry is the detector itself: ``model(batch_tensor, metas)`` on an already normalised,
padded batch, so results can be compared with the original on the very same input tensor.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gcnet.data import collate, load_image, preprocess
from gcnet.data.config import DataConfig
from gcnet.errors import UserError
from gcnet.evaluation import encode_masks
from gcnet.structures import Detections
from gcnet.visualise import save_visualisation

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


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_image_paths(paths: Sequence[Path]) -> list[Path]:
    """Image files to predict on: files as given, directories as their image files (sorted, not
    recursive). Checked before any work starts, so a typo fails at once with the path named."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: directory has no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such image file or directory")
    return files


def _output_names(paths: Sequence[Path]) -> list[str]:
    """One PNG name per image: its stem, made unique when two inputs share one (a/1.jpg, b/1.jpg)."""
    stems = [p.stem for p in paths]
    uses = collections.Counter(stems)
    return [f"{s}.png" if uses[s] == 1 else f"{s}_{i}.png" for i, s in enumerate(stems)]


def predict_to_dir(
    model: torch.nn.Module,
    images: Sequence[Path],
    out_dir: Path,
    data_cfg: DataConfig = DataConfig(),
    score_thr: float = 0.3,
) -> Path:
    """Write one PNG per image (masks, boxes, names, scores) and ``detections.json``; ``images``
    may name files and directories (see :func:`expand_image_paths`)."""
    images = expand_image_paths(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    names_out = _output_names(images)
    for index, path in enumerate(tqdm(images, desc="predict", dynamic_ncols=True)):
        rgb = to_rgb_array(path)
        det = predict(model, rgb, data_cfg)[0]
        save_visualisation(rgb, det, out_dir / names_out[index], score_thr)
        rles = encode_masks(det.masks) if det.masks is not None else [None] * len(det)
        names = det.label_names
        for k in range(len(det)):
            x1, y1, x2, y2 = det.boxes[k].tolist()
            item = {"image_id": index, "file_name": str(path), "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(det.scores[k]), "label": int(det.labels[k]), "category_name": names[k]}
            if rles[k] is not None:
                item["segmentation"] = rles[k]
            records.append(item)
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(records))
    return json_path
