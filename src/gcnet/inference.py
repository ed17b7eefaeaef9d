"""The user-facing inference calls: images in (paths, PIL images, arrays), detections out;
and predicting into a folder (drawings + COCO results json).

The lower entry is the detector itself: ``model(batch_tensor, metas)`` on an already normalised,
padded batch, so results can be compared with the original on the very same input tensor.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gcnet.data import DatasetError, collate, load_image, preprocess
from gcnet.data.config import DataConfig
from gcnet.data.image_io import to_opencv_rgb
from gcnet.errors import UserError, Warn, warn_line
from gcnet.evaluation import detections_to_coco
from gcnet.paths import check_output_dir, naming, write_json
from gcnet.structures import COCO_CATEGORY_IDS, Detections  # noqa: F401 (re-exported)
from gcnet.structures import category_ids_for as category_ids
from gcnet.visualise import save_visualisation

ImageInput = str | Path | Image.Image | np.ndarray


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Decode any supported image input to a uint8 HWC RGB array."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_opencv_rgb(image)  # as the same image read from a file (orientation aside)
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


@dataclass(frozen=True)
class PredictOutput:
    """What :func:`predict_to_dir` wrote: the COCO results json, the COCO images/categories json it
    refers to, the number of images done and the messages of the ones skipped."""

    detections: Path
    images: Path
    done: int
    skipped: tuple[str, ...]


def _confident(det: Detections, score_thr: float) -> Detections:
    return det.filter(score_thr)


def predict_to_dir(
    model: torch.nn.Module,
    images: Sequence[Path],
    out_dir: Path,
    data_cfg: DataConfig = DataConfig(),
    score_thr: float = 0.3,
    on_skip: Warn | None = None,
) -> PredictOutput:
    """Predict each image into ``out_dir``: a PNG per image (masks, boxes, names, scores) and two
    jsons that ``pycocotools.coco.COCO("images.json").loadRes("detections.json")`` reads.

    ``detections.json`` is COCO results format (``image_id``, ``category_id``, ``bbox`` xywh,
    ``score``, ``segmentation`` RLE) with the detections scoring at least ``score_thr``: the same
    set the PNGs draw. ``images.json`` holds the ``images`` (id = 1-based position in ``images``,
    ``file_name`` as given, ``width``, ``height``, ``drawing``: its PNG) and ``categories`` (see
    :func:`category_ids`). An image that cannot be decoded is reported by ``on_skip(message)``
    (default: a warning line) and left out; both jsons are written even when a run stops midway.
    """
    images = expand_image_paths(images)
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warn = on_skip or warn_line
    class_names = tuple(getattr(model, "class_names", ()))
    cat_ids = category_ids(class_names)
    categories = [{"id": c, "name": n} for c, n in zip(cat_ids, class_names)]
    names_out = _output_names(images)
    records: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []

    def write() -> PredictOutput:
        header = {"images": entries, "categories": categories, "annotations": []}
        return PredictOutput(
            write_json(out_dir / "detections.json", records),
            write_json(out_dir / "images.json", header),
            len(entries),
            tuple(skipped),
        )

    try:
        for index, path in enumerate(tqdm(images, desc="predict", dynamic_ncols=True)):
            try:
                rgb = to_rgb_array(path)
            except DatasetError as err:
                skipped.append(str(err))
                warn(f"{err}; skipped")
                continue
            det = _confident(predict(model, rgb, data_cfg)[0], score_thr)
            with naming(out_dir / names_out[index]):
                save_visualisation(rgb, det, out_dir / names_out[index], score_thr)
            image_id = index + 1  # by position, so ids do not move when an image is skipped
            entries.append(
                {
                    "id": image_id,
                    "file_name": str(path),
                    "width": int(rgb.shape[1]),
                    "height": int(rgb.shape[0]),
                    "drawing": names_out[index],
                }
            )
            records.extend(detections_to_coco([det], [image_id], cat_ids))
    except BaseException:
        with contextlib.suppress(OSError):  # keep what was done; the stop itself is the error
            write()
        raise
    return write()
