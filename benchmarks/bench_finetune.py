"""Fine-tuning vs training from scratch on a small own dataset, same iterations, same data, CPU.

    python benchmarks/bench_finetune.py [--iters 100] [--pretrain-iters 300] [--out bench_out/finetune]

A GC r4 Mask R-CNN of the demo's structure is first trained on the 5-class shapes set (the
stand-in for a published COCO checkpoint); then a 3-class set of other images (circle, triangle,
star) is trained for ``--iters`` iterations twice: with ``train.load_from`` = that checkpoint (its
class layers re-initialised) and from random weights. Both runs use the same schedule and seed and
are evaluated on the 3-class set's held-out split. Prints a JSON summary and a Markdown table row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gcnet.bench import cpu_model
from gcnet.build import build
from gcnet.config import Config, apply_overrides
from gcnet.data import make_synthetic_coco
from gcnet.engine import train
from gcnet.evaluation import evaluate_model
from gcnet.zoo import demo_config

TARGET_CLASSES = ("circle", "triangle", "star")


def _config(
    paths: dict[str, str], iters: int, images_per_iter: int, num_train: int, size: int, load_from: str | None
) -> Config:
    """The demo's model and schedule shape at ``size`` pixels, for ``iters`` iterations in all."""
    per_epoch = math.ceil(num_train / images_per_iter)
    epochs = max(1, math.ceil(iters / per_epoch))
    cfg = demo_config()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data,
            train_ann=paths["train_ann"],
            train_images=paths["train_images"],
            val_ann=paths.get("val_ann"),
            val_images=paths.get("val_images"),
        ),
    )
    last = max(1, round(0.75 * epochs))
    milestones = (last,) if last < epochs else ()
    return apply_overrides(
        cfg,
        [
            f"data.scale=({size}, {size})",
            f"data.images_per_gpu={images_per_iter}",
            "data.workers_per_gpu=1",
            f"train.epochs={epochs}",
            f"train.milestones={milestones}",
            f"train.warmup_iters={min(50, iters // 4)}",
            f"train.log_interval={max(1, per_epoch)}",
            f"train.load_from={load_from}",
        ],
    )


def _train_and_eval(cfg: Config, work: Path) -> tuple[float, float, float]:
    """(bbox AP, segm AP, seconds) after training ``cfg`` in a fresh ``work``."""
    start = time.perf_counter()
    final = train(cfg, work, device="cpu", overwrite=True)
    seconds = time.perf_counter() - start
    model = build(final).model  # the checkpoint records its config
    assert cfg.data.val_ann and cfg.data.val_images
    with contextlib.redirect_stdout(io.StringIO()):  # COCO's table: the summary below has the numbers
        stats = evaluate_model(model, cfg.data.val_ann, cfg.data.val_images, cfg.data, progress=False)
    return float(stats["bbox"][0]), float(stats["segm"][0]), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/finetune"))
    parser.add_argument("--iters", type=int, default=100, help="iterations of each run on the 3-class set")
    parser.add_argument("--pretrain-iters", type=int, default=300, help="iterations on the 5-class set")
    parser.add_argument("--source", default=None, help="a 5-class checkpoint to fine-tune from (skips pretraining)")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--train-images", type=int, default=40, help="images of the 3-class training set")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the loader has 1 worker)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch = 4
    common: dict[str, Any] = dict(
        image_size=(args.size, args.size), object_size=(12, int(0.45 * args.size)), max_objects=4
    )
    target = make_synthetic_coco(
        args.out / "data3", num_train=args.train_images, num_val=60, seed=1, classes=TARGET_CLASSES, **common
    )
    timings: dict[str, float] = {}
    source = args.source
    if source is None:
        source_train = 5 * 40
        data5 = make_synthetic_coco(args.out / "data5", num_train=source_train, num_val=0, seed=0, **common)
        cfg5 = _config(data5, args.pretrain_iters, batch, source_train, args.size, None)
        start = time.perf_counter()
        source = str(train(cfg5, args.out / "source5", device="cpu", overwrite=True))
        timings["pretrain_s"] = round(time.perf_counter() - start, 1)
    runs = {}
    for name, load_from in (("fine-tuned", source), ("from scratch", None)):
        cfg = _config(target, args.iters, batch, args.train_images, args.size, load_from)
        bbox, segm, seconds = _train_and_eval(cfg, args.out / name.replace(" ", "_"))
        runs[name] = {"bbox_AP": round(bbox, 3), "segm_AP": round(segm, 3), "train_s": round(seconds, 1)}
    summary = {
        "date": date.today().isoformat(),
        "machine": f"{cpu_model()}, {os.cpu_count()} logical cores, {torch.get_num_threads()} thread(s)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "iters": args.iters,
        "pretrain_iters": None if args.source else args.pretrain_iters,
        "source": source,
        "images_per_iter": batch,
        "image_size": args.size,
        "train_images": args.train_images,
        "val_images": 60,
        "runs": runs,
        **timings,
    }
    print(json.dumps(summary, indent=2))
    ft, sc = runs["fine-tuned"], runs["from scratch"]
    print(f"| {args.iters} | {ft['bbox_AP']:.3f} | {sc['bbox_AP']:.3f} | {ft['segm_AP']:.3f} | {sc['segm_AP']:.3f} |")


if __name__ == "__main__":
    main()
