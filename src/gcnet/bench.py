"""Speed and memory measurements, done the way the original measured its model-zoo table.

Inference (the original's ``tools/analysis_tools/benchmark.py``): batch 1, the test pipeline's image
size, the first ``warmup`` iterations excluded, the device synchronised around each timed call,
forward + post-processing (mask pasting into the original image size: the detector returns compact
``BoxMasks``, and the timed step pastes them with ``masks.full()`` as the torchvision peer returns
full-image masks) inside the timer, data loading
and pre-processing outside it. fps = timed images / total timed seconds.
Memory (the original's "Mem (GB)"): ``torch.cuda.max_memory_allocated`` during training at 2 images
per device. On CPU there is no allocator counter, so we report the growth of the process's resident
set size, sampled every few milliseconds (approximate, and stated as such in ``mem_note``).

Default input: a 640x427 (w x h) image, the most common COCO val2017 size; the test pipeline resizes it
to 800x1199 and pads it to 800x1216.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch import Tensor, nn

from gcnet.build import build
from gcnet.config import Config, DataConfig
from gcnet.data import preprocess
from gcnet.speed import (  # noqa: F401 (re-exported: the measurement primitives and speed-ups live there)
    CompileScope,
    _MemoryMeter,
    _timed_loop,
    autocast_context,
    compile_detector,
    fuse_conv_bn,
    prepare_for_inference,
    sync,
)
from gcnet.structures import Detections, ImageMeta, Targets
from gcnet.zoo import ZOO

DType = Literal["fp32", "bf16", "fp16"]
DEFAULT_IMAGE_SIZE: tuple[int, int] = (427, 640)
PEER_NAME = "torchvision maskrcnn_resnet50_fpn"
ImageSource = tuple[int, int] | Sequence[np.ndarray]


@dataclass(frozen=True)
class BenchResult:
    """One measurement: per-iteration times (ms), peak memory and how it was obtained."""

    name: str
    mode: Literal["inference", "train"]
    device: str
    dtype: str
    compiled: bool
    input_shape: tuple[int, int]  # padded network input (h, w) of the first timed batch
    batch_size: int
    times_ms: tuple[float, ...]
    peak_mem_mb: float | None
    mem_note: str
    detections_per_image: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def iters(self) -> int:
        return len(self.times_ms)

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def mean_ms(self) -> float:
        return float(statistics.fmean(self.times_ms))

    @property
    def fps(self) -> float:
        """Images per second over the timed iterations (the original's definition)."""
        return 1000.0 * self.batch_size / self.mean_ms

    @property
    def peak_mem_gb(self) -> float | None:
        return None if self.peak_mem_mb is None else self.peak_mem_mb / 1024.0


# ----------------------------------------------------------------------------------------- inputs


def resized_shape(image_size: tuple[int, int], data: DataConfig = DataConfig()) -> tuple[int, int]:
    """The test pipeline's keep-ratio resize: factor = min(long/L, short/S), size = int(x*f + 0.5)."""
    oh, ow = image_size
    if oh <= 0 or ow <= 0:
        raise ValueError(f"image_size must be a positive (h, w), got {image_size}")
    long_max, short_max = max(data.scale), min(data.scale)
    factor = min(long_max / max(oh, ow), short_max / min(oh, ow))
    return int(oh * factor + 0.5), int(ow * factor + 0.5)


def _pad_to(n: int, divisor: int) -> int:
    return int(math.ceil(n / divisor) * divisor)


def synthetic_input(
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    data: DataConfig = DataConfig(),
    batch_size: int = 1,
    seed: int = 0,
) -> tuple[Tensor, list[ImageMeta]]:
    """A normalised, zero-padded batch as the test pipeline would produce for images of ``image_size``.

    Pixels are seeded standard-normal noise (what normalised pixels look like to the network).
    """
    h, w = resized_shape(image_size, data)
    hp, wp = _pad_to(h, data.size_divisor), _pad_to(w, data.size_divisor)
    gen = torch.Generator().manual_seed(seed)
    images = torch.zeros(batch_size, 3, hp, wp)
    images[:, :, :h, :w] = torch.randn(batch_size, 3, h, w, generator=gen)
    meta = ImageMeta(
        img_shape=(h, w),
        ori_shape=cast("tuple[int, int]", tuple(image_size)),
        scale_factor=(w / image_size[1], h / image_size[0]),
        pad_shape=(hp, wp),
    )
    return images, [meta] * batch_size


def _real_inputs(images: Sequence[np.ndarray], data: DataConfig) -> list[tuple[Tensor, list[ImageMeta]]]:
    """Each uint8 HWC RGB image through ``gcnet.data.preprocess``, padded as the collate step does."""
    batches = []
    for i, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"images[{i}]: expected a uint8 HxWx3 array, got {type(image).__name__}")
        tensor, meta = preprocess(image, data)
        h, w = tensor.shape[-2:]
        hp, wp = _pad_to(h, data.size_divisor), _pad_to(w, data.size_divisor)
        batch = tensor.new_zeros(1, 3, hp, wp)
        batch[0, :, :h, :w] = tensor
        batches.append((batch, [dataclasses.replace(meta, pad_shape=(hp, wp))]))
    return batches


def _maybe_compile(model: nn.Module, compile: bool | CompileScope) -> nn.Module:
    """``compile``: False, True (= "full") or a :func:`compile_detector` scope."""
    if not compile:
        return model
    if not hasattr(model, "roi_head"):  # a peer or stand-in: whole-module compile
        return cast(nn.Module, torch.compile(model))  # a module compiles to a module (OptimizedModule)
    return compile_detector(model, "full" if compile is True else compile)


def _pasted(out: Any) -> Any:
    """``out`` after pasting each image's compact masks to bool [N, H, W] (``BoxMasks.full``), the
    work the torchvision peer's full-image masks include, so both timers measure the same steps."""
    for det in out:
        if isinstance(det, Detections) and det.masks is not None:
            det.masks.full()
    return out


def benchmark_inference(
    model: nn.Module,
    image_size: ImageSource = DEFAULT_IMAGE_SIZE,
    device: str | torch.device = "cpu",
    dtype: DType = "fp32",
    compile: bool | CompileScope = False,
    warmup: int = 5,
    iters: int = 50,
    data: DataConfig = DataConfig(),
    name: str = "",
) -> BenchResult:
    """Time ``model(images, metas)`` at batch 1 (forward + post-processing incl. mask pasting).

    ``image_size`` is the *original* image (h, w) that the test pipeline resizes (synthetic pixels),
    or a list of uint8 HxWx3 RGB images used in turn. Pre-processing happens before the timer.
    """
    device = torch.device(device)
    model = model.to(device).eval()
    if isinstance(image_size, tuple):
        batches = [synthetic_input(image_size, data)]
    else:
        batches = _real_inputs(image_size, data)
    batches = [(img.to(device), metas) for img, metas in batches]
    runner = _maybe_compile(model, compile)

    def step(i: int) -> Any:
        images, metas = batches[i % len(batches)]
        with torch.inference_mode(), autocast_context(device, dtype):
            return _pasted(runner(images, metas))

    times, counts, meter = _timed_loop(step, device, warmup, iters, keep=lambda out: [len(d) for d in out])
    dets = [n for per_image in counts for n in per_image]
    return BenchResult(
        name=name or type(model).__name__,
        mode="inference",
        device=str(device),
        dtype=dtype,
        compiled=bool(compile),
        input_shape=cast("tuple[int, int]", tuple(batches[0][0].shape[-2:])),
        batch_size=1,
        times_ms=tuple(times),
        peak_mem_mb=meter.peak_mb,
        mem_note=meter.note,
        detections_per_image=float(np.mean(dets)) if dets else 0.0,
    )


def synthetic_targets(meta: ImageMeta, num_classes: int, num_boxes: int = 4, seed: int = 0) -> Targets:
    """A few random boxes (at least 16 px) with filled-rectangle masks inside the resized image."""
    gen = torch.Generator().manual_seed(seed)
    h, w = meta.img_shape
    size = torch.rand(num_boxes, 2, generator=gen) * 0.4 + 0.1
    wh = torch.stack([size[:, 0] * w, size[:, 1] * h], 1).clamp(min=16.0)
    xy = torch.rand(num_boxes, 2, generator=gen) * (torch.tensor([w, h]) - wh).clamp(min=0)
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(0, num_classes, (num_boxes,), generator=gen)
    masks = torch.zeros(num_boxes, h, w, dtype=torch.uint8)
    for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        masks[k, y1:y2, x1:x2] = 1
    return Targets(boxes=boxes, labels=labels, masks=masks)


def cpu_model() -> str:
    """The CPU's model name, for the machine line of a benchmark report."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def benchmark_training_step(
    model: nn.Module,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    device: str | torch.device = "cpu",
    dtype: DType = "fp32",
    compile: bool | CompileScope = False,
    warmup: int = 2,
    iters: int = 10,
    batch_size: int = 2,
    data: DataConfig = DataConfig(),
    name: str = "",
) -> BenchResult:
    """Time one SGD step (forward, losses, backward, update) at ``batch_size`` images per device.

    Peak memory over the timed steps approximates the original's "Mem (GB)" (2 images per GPU).
    """
    device = torch.device(device)
    model = model.to(device).train()
    images, metas = synthetic_input(image_size, data, batch_size=batch_size)
    num_classes = getattr(getattr(getattr(model, "cfg", None), "roi", None), "num_classes", 80)
    targets = [synthetic_targets(m, num_classes, seed=k).to(device) for k, m in enumerate(metas)]
    images = images.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-5, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    runner = _maybe_compile(model, compile)

    def step(i: int) -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, dtype):
            losses = runner(images, metas, targets)
            loss = torch.stack([v.float() for k, v in losses.items() if "loss" in k]).sum()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    times, losses, meter = _timed_loop(step, device, warmup, iters)
    if not all(math.isfinite(v) for v in losses):
        raise FloatingPointError(f"benchmark_training_step: non-finite loss {losses}")
    return BenchResult(
        name=name or type(model).__name__,
        mode="train",
        device=str(device),
        dtype=dtype,
        compiled=bool(compile),
        input_shape=cast("tuple[int, int]", tuple(images.shape[-2:])),
        batch_size=batch_size,
        times_ms=tuple(times),
        peak_mem_mb=meter.peak_mb,
        mem_note=meter.note,
        extra={"last_loss": losses[-1]},
    )


# ------------------------------------------------------------------------------------------- peer


def torchvision_peer(
    num_classes: int = 80,
    proposals: int = 1000,
    detections: int = 100,
    score_thresh: float = 0.05,
    data: DataConfig = DataConfig(),
) -> nn.Module:
    """torchvision's Mask R-CNN R-50 FPN with random weights and the original's test budget.

    ``num_classes`` excludes background (torchvision counts it, so the head gets num_classes + 1);
    its internal resize uses the same (short, long) limits as ``data.scale``.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    return maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=num_classes + 1,
        rpn_pre_nms_top_n_test=proposals,
        rpn_post_nms_top_n_test=proposals,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections,
        min_size=min(data.scale),
        max_size=max(data.scale),
    )


def benchmark_peer(
    peer: nn.Module,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    device: str | torch.device = "cpu",
    dtype: DType = "fp32",
    compile: bool | CompileScope = False,
    warmup: int = 5,
    iters: int = 50,
    name: str = PEER_NAME,
) -> BenchResult:
    """The same measurement for a torchvision detector (its own resize/normalise runs inside the timer)."""
    device = torch.device(device)
    peer = peer.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(3, *image_size, generator=gen).to(device)
    runner = _maybe_compile(peer, compile)

    def step(i: int) -> Any:
        with torch.inference_mode(), autocast_context(device, dtype):
            return runner([image])

    times, counts, meter = _timed_loop(step, device, warmup, iters, keep=lambda out: [len(d["boxes"]) for d in out])
    dets = [n for per_image in counts for n in per_image]
    with torch.inference_mode():
        if hasattr(peer, "transform"):  # torchvision's GeneralizedRCNNTransform (resize and pad)
            shape = cast(nn.Module, peer.transform)([image])[0].tensors.shape[-2:]
        else:
            shape = image.shape[-2:]
    return BenchResult(
        name=name,
        mode="inference",
        device=str(device),
        dtype=dtype,
        compiled=bool(compile),
        input_shape=tuple(shape),
        batch_size=1,
        times_ms=tuple(times),
        peak_mem_mb=meter.peak_mb,
        mem_note=meter.note,
        detections_per_image=float(np.mean(dets)) if dets else 0.0,
    )


# ------------------------------------------------------------------------------------ reporting


def _seed_numbers(name: str) -> tuple[float | None, float | None]:
    """(mem GB, fps) the original's table gives for ``name``, or None where unknown."""
    entry = ZOO.get(name)
    return (None, None) if entry is None else (entry.mem_gb, entry.fps)


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


ROW_HEADER = (
    "| config | mode | device | dtype | input | mem GB | fps | median ms | seed mem GB | seed fps |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
)


def format_row(result: BenchResult, config_name: str | None = None) -> str:
    """A markdown row comparable with the seed's table (seed numbers from ``gcnet.zoo`` when known).

    The seed's numbers are V100 FP32 figures: compare ratios, not absolute values, on other hardware.
    """
    seed_mem, seed_fps = _seed_numbers(config_name or result.name)
    h, w = result.input_shape
    return (
        f"| {config_name or result.name} | {result.mode} | {result.device} | {result.dtype}"
        f"{' +compile' if result.compiled else ''} | {h}x{w} | {_fmt(result.peak_mem_gb, 2)} | "
        f"{result.fps:.2f} | {result.median_ms:.1f} | {_fmt(seed_mem, 1)} | {_fmt(seed_fps, 1)} |"
    )


# ------------------------------------------------------------------------------------------- CLI


def run_bench(
    config_name_or_cfg: str | Path | Config,
    checkpoint: str | Path | None = None,
    overrides: Sequence[str] = (),
    device: str | torch.device = "cpu",
    dtype: DType = "fp32",
    compile: bool | CompileScope = False,
    iters: int = 50,
    peer: bool = False,
    image_size: ImageSource = DEFAULT_IMAGE_SIZE,
    warmup: int = 5,
    train: bool = False,
    fast: bool = False,
) -> list[BenchResult]:
    """What ``gcnet bench`` runs: inference (and optionally a training step) of one config, plus the peer.

    ``fast`` times the inference mode of :func:`gcnet.speed.prepare_for_inference` (folded BN,
    channels-last, fastest CPU conv kernels); the peer then gets the same preparation.

    The model comes from :func:`gcnet.build.build` (zoo name, ``gcnet-demo``, Config or checkpoint
    file). Weights are random unless a checkpoint is given (speed does not depend on them, except through
    the number of detections that survive the score threshold).
    """
    built = build(config_name_or_cfg, checkpoint, overrides=overrides)
    model, cfg = built.model, built.config
    # one model on the device at a time, so each peak memory is that model's alone
    timed = prepare_for_inference(model.eval()) if fast else model
    results = [
        benchmark_inference(
            timed, image_size, device, dtype, compile, warmup=warmup, iters=iters, data=cfg.data, name=cfg.name
        )
    ]
    _off_device(timed)
    if train:
        if not isinstance(image_size, tuple):
            raise ValueError("run_bench(train=True) needs image_size as an (h, w) tuple")
        results.append(
            benchmark_training_step(
                model,
                image_size,
                device,
                dtype,
                compile,
                warmup=min(warmup, 2),
                iters=iters,
                data=cfg.data,
                name=cfg.name,
            )
        )
        _off_device(model)
    if peer:
        if not isinstance(image_size, tuple):
            raise ValueError("run_bench(peer=True) needs image_size as an (h, w) tuple")
        tv = torchvision_peer(num_classes=cfg.model.roi.num_classes, data=cfg.data)
        if fast:
            tv = prepare_for_inference(tv.eval())
        results.append(benchmark_peer(tv, image_size, device, dtype, compile, warmup=warmup, iters=iters))
        _off_device(tv)
    return results


def _off_device(model: nn.Module) -> None:
    """Move a measured model back to host memory and return its GPU blocks to the allocator."""
    model.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
