"""The user-facing inference calls: images in (paths, directories, PIL images, arrays, and lists or
iterators of them), detections out, as a list or streamed; and predicting into a folder (drawings +
COCO results json).

The lower entry is the detector itself: ``model(batch_tensor, metas)`` on an already normalised,
padded batch, so results can be compared with the original on the very same input tensor.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from gcnet.data import DatasetError, collate, load_image, preprocess
from gcnet.data.config import DataConfig
from gcnet.errors import UserError, Warn, warn_line
from gcnet.image_io import to_opencv_rgb
from gcnet.models.config import RoIConfig
from gcnet.paths import check_output_dir, naming, write_json
from gcnet.prefetch import Failed, prefetch
from gcnet.structures import COCO_CATEGORY_IDS, Detections  # noqa: F401 (re-exported)
from gcnet.structures import category_ids_for as category_ids
from gcnet.tiling import drop_cut, merge_tiles, tile_windows
from gcnet.visualise import save_visualisation

ImageInput = str | Path | Image.Image | np.ndarray
Images = ImageInput | Iterable[ImageInput]
_ONE_IMAGE = (str, Path, Image.Image, np.ndarray)


def _array_problem(image: np.ndarray) -> str | None:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        return f"expected an HxWx3 RGB array, got shape {tuple(image.shape)}"
    if image.dtype != np.uint8:
        return f"expected a uint8 RGB array, got dtype {image.dtype}"
    return None


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Decode any supported image input to a uint8 HWC RGB array."""
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return to_opencv_rgb(image)  # as the same image read from a file (orientation aside)
    if isinstance(image, np.ndarray):
        problem = _array_problem(image)
        if problem:
            raise ValueError(problem)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, :3])
    raise TypeError(f"unsupported image input of type {type(image).__name__}")


@dataclass(frozen=True)
class _Input:
    """One image to predict: how messages name it, what it is, and its file (path inputs)."""

    name: str
    source: ImageInput
    path: Path | None = None


def _inputs(images: Images) -> Iterator[_Input]:
    """The images of ``images`` one by one: directories as their image files (see
    :func:`expand_image_paths`); a missing path or an input of the wrong type or shape is an error
    naming it (``images[i]`` for an item that is not a path), raised when the walk reaches it."""
    if isinstance(images, _ONE_IMAGE):
        items: Iterable[Any] = [images]
    elif isinstance(images, Iterable):
        items = images
    else:
        raise TypeError(f"images: unsupported image input of type {type(images).__name__}")
    for position, item in enumerate(items):
        if isinstance(item, (str, Path)):
            for path in expand_image_paths([Path(item)]):
                yield _Input(str(path), path, path)
            continue
        name = f"images[{position}]"
        if not isinstance(item, (Image.Image, np.ndarray)):
            raise TypeError(f"{name}: unsupported image input of type {type(item).__name__}")
        problem = _array_problem(item) if isinstance(item, np.ndarray) else None
        if problem:
            raise ValueError(f"{name}: {problem}")
        yield _Input(name, item)


def _decode(item: _Input) -> np.ndarray:
    return to_rgb_array(item.source)


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_options(batch_size: int, tile: int | None, tile_overlap: float) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1 pixel, got {tile}")
    if not 0.0 <= tile_overlap < 1.0:
        raise ValueError(f"tile_overlap must be in [0, 1), got {tile_overlap}")


@overload
def predict(
    model: torch.nn.Module,
    images: Images,
    data_cfg: DataConfig = ...,
    batch_size: int = ...,
    dtype: torch.dtype | None = ...,
    *,
    stream: Literal[False] = ...,
    tile: int | None = ...,
    tile_overlap: float = ...,
    tile_drop_cut: bool = ...,
) -> list[Detections]: ...


@overload
def predict(
    model: torch.nn.Module,
    images: Images,
    data_cfg: DataConfig = ...,
    batch_size: int = ...,
    dtype: torch.dtype | None = ...,
    *,
    stream: Literal[True],
    tile: int | None = ...,
    tile_overlap: float = ...,
    tile_drop_cut: bool = ...,
) -> Iterator[Detections]: ...


def predict(
    model: torch.nn.Module,
    images: Images,
    data_cfg: DataConfig = DataConfig(),
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
    *,
    stream: bool = False,
    tile: int | None = None,
    tile_overlap: float = 0.2,
    tile_drop_cut: bool = True,
) -> list[Detections] | Iterator[Detections]:
    """Detect objects in ``images`` with the test pipeline of ``data_cfg``.

    ``images``: a path, a directory (its image files, sorted), an HxWx3 uint8 RGB array, a PIL
    image, or a list / tuple / iterator / generator of those, mixed. Returns one
    :class:`Detections` per image, in order: ``boxes`` float xyxy in original-image pixels,
    ``scores``, 0-based ``labels`` (names in ``label_names``), ``masks`` in the original image,
    and the input: ``path`` for a file, ``image`` (the RGB array used) otherwise, so that
    ``det.plot()`` needs no argument. A list or tuple is checked whole before any work (a missing
    file, a wrong type or shape fails at once, naming the item); an iterator as it is read.

    ``stream=True`` returns a generator instead of a list, one :class:`Detections` at a time:
    memory stays constant, so an endless iterator (video frames, a camera) works. Images are
    decoded in a background thread while the model runs, and batched (up to ``batch_size``) only
    with images of the same padded size, so the results equal one-at-a-time inference.

    ``tile`` (pixels): also detect in overlapping ``tile`` x ``tile`` windows (neighbours share
    ``tile_overlap`` of a window) and merge them with the full image's detections by NMS (SAHI's
    standard + sliced prediction; see :mod:`gcnet.tiling`), to find objects too small at the
    detector's scale. A window's detections that reach one of its edges inside the image (objects it
    cut, whole in a neighbour or the full image) are dropped first, unless ``tile_drop_cut=False``
    (SAHI's way). ``dtype`` (``torch.bfloat16`` / ``torch.float16``) runs under autocast.
    """
    _check_options(batch_size, tile, tile_overlap)
    run = _Run(model, data_cfg, batch_size, dtype, tile, tile_overlap, tile_drop_cut)
    if stream:
        return run.stream(_inputs(images), window=batch_size)
    return list(run.stream(list(_inputs(images)), window=8 * batch_size))


@dataclass(frozen=True)
class _Run:
    """What :func:`predict` was asked to do, applied to windows of decoded images."""

    model: torch.nn.Module
    data_cfg: DataConfig
    batch_size: int
    dtype: torch.dtype | None
    tile: int | None
    tile_overlap: float
    tile_drop_cut: bool

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """The model in eval mode for the block, then back in its own train/eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    def stream(self, inputs: Iterable[_Input], window: int) -> Iterator[Detections]:
        """Detections of ``inputs`` in order, decoding ahead while ``window`` images at a time
        are detected; the model is put back in its own train/eval mode when this ends."""
        with self.evaluating():
            pending: list[tuple[_Input, np.ndarray]] = []
            decoded = prefetch(inputs, _decode, depth=window)
            with contextlib.closing(decoded):  # the decoding thread stops with the loop, however it ends
                for item, rgb in decoded:
                    if isinstance(rgb, Failed):
                        raise rgb.error
                    pending.append((item, rgb))
                    if len(pending) == window:
                        yield from self._window(pending)
                        pending = []
            yield from self._window(pending)

    def _window(self, pending: list[tuple[_Input, np.ndarray]]) -> Iterator[Detections]:
        dets = self.detect_images([rgb for _, rgb in pending])
        for (item, rgb), det in zip(pending, dets):
            if item.path is None:
                yield dataclasses.replace(det, image=rgb)
            else:
                yield dataclasses.replace(det, path=str(item.path))

    def detect_images(self, rgbs: Sequence[np.ndarray]) -> list[Detections]:
        """One image's detections per decoded array: whole images, or tiled when ``tile`` is set."""
        return self.detect(rgbs) if self.tile is None else [self._tiled(rgb, self.tile) for rgb in rgbs]

    def detect(self, rgbs: Sequence[np.ndarray]) -> list[Detections]:
        """One image's detections per array, batching same-padded-size images."""
        device = _model_device(self.model)
        divisor = self.data_cfg.size_divisor
        samples = [(*preprocess(rgb, self.data_cfg), None) for rgb in rgbs]
        results: list[Detections | None] = [None] * len(samples)
        for group in _same_padded_size(samples, divisor, self.batch_size):
            batch = collate([samples[i] for i in group], size_divisor=divisor).to(device)
            with torch.inference_mode(), torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype is not None):
                detections = self.model(batch.images, batch.metas)
            for i, det in zip(group, detections):
                results[i] = det.to("cpu")
        return results  # type: ignore[return-value]

    def _tiled(self, rgb: np.ndarray, size: int) -> Detections:
        """The full image and its ``size`` windows detected (windows batched), merged by NMS."""
        height, width = rgb.shape[:2]
        windows = tile_windows(height, width, size, self.tile_overlap)
        if windows == [(0, 0, width, height)]:  # the image fits one window: nothing to add
            return self.detect([rgb])[0]
        crops = [rgb] + [rgb[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
        chunk = 8 * self.batch_size  # preprocessed windows held at a time
        parts = [det for start in range(0, len(crops), chunk) for det in self.detect(crops[start : start + chunk])]
        if self.tile_drop_cut:
            parts[1:] = [drop_cut(part, window, (height, width)) for part, window in zip(parts[1:], windows)]
        offsets = [(0, 0)] + [(x0, y0) for x0, y0, _, _ in windows]
        roi = _roi_config(self.model)  # the model's NMS and detection cap, applied across windows too
        return merge_tiles(parts, offsets, (height, width), roi.nms_iou, roi.class_agnostic_nms, roi.max_per_img)


def _roi_config(model: torch.nn.Module) -> RoIConfig:
    """The RoI settings of ``model`` (a gcnet detector, compiled or exported), else the defaults."""
    roi = getattr(getattr(model, "cfg", None), "roi", None)
    return roi if isinstance(roi, RoIConfig) else RoIConfig()


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


def output_names(paths: Sequence[Path], suffix: str | None = ".png") -> list[str]:
    """One output file name per input: its stem (and ``suffix``, or its own suffix when None), made
    unique when two inputs share one (a/1.jpg, b/1.jpg -> 1_0.png, 1_1.png)."""
    stems = [p.stem for p in paths]
    suffixes = [p.suffix if suffix is None else suffix for p in paths]
    uses = collections.Counter(stems)
    return [f"{s}{x}" if uses[s] == 1 else f"{s}_{i}{x}" for i, (s, x) in enumerate(zip(stems, suffixes))]


class CocoWriter:
    """The two jsons of a prediction run, kept as detections arrive: COCO results (``image_id``,
    ``category_id``, ``bbox`` xywh, ``score``, ``segmentation`` RLE) and the header they refer to
    (``images``, ``categories``), so that ``COCO(images).loadRes(detections)`` reads them."""

    def __init__(self, model: torch.nn.Module, detections: Path, images: Path) -> None:
        class_names = tuple(getattr(model, "class_names", ()))
        self.cat_ids = list(getattr(model, "category_ids", ()) or category_ids(class_names))
        self.categories = [{"id": c, "name": n} for c, n in zip(self.cat_ids, class_names)]
        self.paths = detections, images
        self.records: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []

    def add(self, det: Detections, entry: dict[str, Any]) -> None:
        """One image's ``entry`` (its ``id`` and facts) and its detections."""
        self.entries.append(entry)
        self.records.extend(det.to_coco(entry["id"], self.cat_ids))

    def write(self) -> tuple[Path, Path]:
        header = {"images": self.entries, "categories": self.categories, "annotations": []}
        return write_json(self.paths[0], self.records), write_json(self.paths[1], header)

    @contextlib.contextmanager
    def kept(self) -> Iterator[CocoWriter]:
        """Writes what was done when the block stops midway (the stop itself stays the error)."""
        try:
            yield self
        except BaseException:
            with contextlib.suppress(OSError):
                self.write()
            raise


@dataclass(frozen=True)
class PredictOutput:
    """What :func:`predict_to_dir` wrote: the COCO results json, the COCO images/categories json it
    refers to, the number of images done, the messages of the ones skipped, and the seconds taken."""

    detections: Path
    images: Path
    done: int
    skipped: tuple[str, ...]
    seconds: float = 0.0


def predict_to_dir(
    model: torch.nn.Module,
    images: Sequence[Path],
    out_dir: Path,
    data_cfg: DataConfig = DataConfig(),
    score_thr: float = 0.3,
    on_skip: Warn | None = None,
    batch_size: int = 1,
    tile: int | None = None,
    tile_overlap: float = 0.2,
    tile_drop_cut: bool = True,
) -> PredictOutput:
    """Predict each image into ``out_dir``: a PNG per image (masks, boxes, names, scores) and two
    jsons that ``pycocotools.coco.COCO("images.json").loadRes("detections.json")`` reads.

    ``detections.json`` is COCO results format (``image_id``, ``category_id``, ``bbox`` xywh,
    ``score``, ``segmentation`` RLE) with the detections scoring at least ``score_thr``: the same
    set the PNGs draw. ``images.json`` holds the ``images`` (id = 1-based position in ``images``,
    ``file_name`` as given, ``width``, ``height``, ``drawing``: its PNG) and ``categories`` (see
    :func:`category_ids`). ``batch_size`` images go through the model at a time (see
    :func:`predict`, also for ``tile``) while the next ones are decoded. An image that cannot be
    decoded is reported by ``on_skip(message)`` (default: a warning line) and left out; both jsons
    are written even when a run stops midway.
    """
    _check_options(batch_size, tile, tile_overlap)
    images = expand_image_paths(images)
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    warn = on_skip or warn_line
    names_out = output_names(images)
    coco = CocoWriter(model, out_dir / "detections.json", out_dir / "images.json")
    skipped: list[str] = []
    start = time.perf_counter()
    # the images come decoded: the runner detects them directly, with no second prefetch
    run = _Run(model, data_cfg, batch_size, None, tile, tile_overlap, tile_drop_cut)

    def flush(batch: list[tuple[int, np.ndarray]]) -> None:
        dets = run.detect_images([rgb for _, rgb in batch])
        for (index, rgb), det in zip(batch, dets):
            det = det.filter(score_thr)
            with naming(out_dir / names_out[index]):
                save_visualisation(rgb, det, out_dir / names_out[index], score_thr)
            entry = {
                "id": index + 1,  # by position, so ids do not move when an image is skipped
                "file_name": str(images[index]),
                "width": int(rgb.shape[1]),
                "height": int(rgb.shape[0]),
                "drawing": names_out[index],
            }
            coco.add(det, entry)
            bar.update()

    with run.evaluating(), coco.kept(), tqdm(total=len(images), desc="predict", unit="img", dynamic_ncols=True) as bar:
        batch: list[tuple[int, np.ndarray]] = []
        decoded = prefetch(range(len(images)), lambda i: to_rgb_array(images[i]), depth=2 * batch_size)
        with contextlib.closing(decoded):  # the decoding thread stops with the loop, however it ends
            for index, rgb in decoded:
                if isinstance(rgb, Failed):
                    if not isinstance(rgb.error, DatasetError):
                        raise rgb.error
                    skipped.append(str(rgb.error))
                    warn(f"{rgb.error}; skipped")
                    bar.update()
                    continue
                batch.append((index, rgb))
                if len(batch) == batch_size:
                    flush(batch)
                    batch = []
        if batch:
            flush(batch)
    written = coco.write()
    return PredictOutput(*written, len(coco.entries), tuple(skipped), time.perf_counter() - start)
