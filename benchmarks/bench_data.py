"""Data pipeline throughput: images/s of the training loader at the original's (1333, 800) scale
with 0/1/2 workers on the synthetic shapes set, against the images/s that the model consumes in a
training step (R-50 GC r4 Mask R-CNN, 2 images, same run), plus resize speed and fidelity against
OpenCV.

    python benchmarks/bench_data.py [--root /tmp/gcnet_bench_shapes] [--images 48] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gcnet.config import DataConfig
from gcnet.data import CocoDetection, build_loader, make_synthetic_coco, rescale_size, resize_to


def loader_rate(ds: CocoDetection, cfg: DataConfig, workers: int) -> float:
    loader = build_loader(ds, DataConfig(**{**cfg.__dict__, "workers_per_gpu": workers}), train=True)
    it = iter(loader)
    next(it)  # worker start-up and first batch are not counted
    start, n = time.perf_counter(), 0
    for batch in it:
        n += len(batch.metas)
    return n / (time.perf_counter() - start)


def resize_compare(repeats: int = 10) -> dict[str, float]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    w, h = rescale_size(640, 480, (1333, 800))
    start = time.perf_counter()
    for _ in range(repeats):
        ours = resize_to(img, (h, w))
    out = {"ours_ms": (time.perf_counter() - start) / repeats * 1e3}
    try:
        import cv2
    except ImportError:
        return out
    start = time.perf_counter()
    for _ in range(repeats):
        ref = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    out["cv2_ms"] = (time.perf_counter() - start) / repeats * 1e3
    diff = np.abs(ours.astype(int) - ref.astype(int))
    out["max_abs_diff"], out["mean_abs_diff"] = float(diff.max()), float(diff.mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="/tmp/gcnet_bench_shapes")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--device", default="cpu", help="where the model's training step runs")
    parser.add_argument("--model-iters", type=int, default=3)
    args = parser.parse_args()
    paths = make_synthetic_coco(
        args.root, num_train=args.images, num_val=0, image_size=((400, 480), (560, 640)), seed=0
    )
    cfg = DataConfig(scale=(1333, 800), images_per_gpu=2)
    ds = CocoDetection(paths["train_ann"], paths["train_images"], cfg, train=True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(ds)} images ~480x600 -> ~800x1067")
    rates = {}
    for workers in (0, 1, 2):
        torch.manual_seed(0)
        rates[workers] = loader_rate(ds, cfg, workers)
        print(f"workers={workers}: {rates[workers]:.1f} images/s ({rates[workers] / rates[0]:.2f}x of 0 workers)")
    model_rate = model_images_per_second(args.device, args.model_iters)
    print(
        f"model training step (R-50 GC r4 Mask R-CNN, 2 images, {args.device}): {model_rate:.2f} images/s;"
        f" loader with 2 workers is {rates[2] / model_rate:.1f}x that"
    )
    print("resize 480x640 -> 800x1067:", resize_compare())


def model_images_per_second(device: str, iters: int) -> float:
    """Images/s that a training step of the published R-50 GC r4 model consumes (random weights)."""
    from gcnet.bench import benchmark_training_step
    from gcnet.models.detector import build_model
    from gcnet.zoo import get_config

    cfg = get_config("mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco")
    model = build_model(cfg.model, cfg.class_names)
    result = benchmark_training_step(model, (480, 600), device, warmup=1, iters=iters, batch_size=2)
    return 2 * 1000.0 / result.median_ms


if __name__ == "__main__":
    main()
