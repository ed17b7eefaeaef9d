"""The embedded default: train a small GCNet Mask R-CNN on the project's synthetic shapes set.

Same architecture as the published models (ResNet with GC r4 blocks in every block of c3-c5, FPN,
RPN, shared-2fc box head, FCN mask head), only smaller (ResNet-18 layout, base width 16, FPN 64
channels, 64 sampled RoIs per image) and on 160x160 images, so that it trains on a 2-core CPU in
minutes. In the basic blocks of ResNet-18 the GC block sits after conv2 -> bn2, the block's last
conv, before the residual add, as it sits after conv3 in a bottleneck. The backbone starts
from random weights (nothing can be downloaded), so BN runs in training mode and no stage is frozen.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gcnet.build import build
from gcnet.config import apply_overrides
from gcnet.data import load_image, make_synthetic_coco
from gcnet.engine import train
from gcnet.evaluation import evaluate_model
from gcnet.inference import predict
from gcnet.report import write_report
from gcnet.report.training import epoch_end_steps
from gcnet.visualise import save_visualisation
from gcnet.zoo import DEMO_IMAGE_SIZE, demo_config


def run_demo(
    work_dir: str | Path,
    overrides: Sequence[str] = (),
    num_train: int = 600,
    num_val: int = 100,
    num_visualised: int = 8,
    report: bool = True,
) -> dict[str, Any]:
    """Generate the data, train, evaluate on the held-out split, draw predictions and (``report``)
    write the evaluation report of the last evaluation to ``work_dir/report/index.html``.

    Returns (and writes to ``work_dir/summary.json``) the AP numbers and the time of each step.
    """
    work_dir = Path(work_dir)
    # one intra-op thread per core left over by the data worker: on small CPUs more threads than
    # cores make every small conv wait for the others
    workers = demo_config().data.workers_per_gpu
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    times: dict[str, float] = {}
    start = time.perf_counter()
    paths = make_synthetic_coco(
        work_dir / "data", num_train=num_train, num_val=num_val, image_size=DEMO_IMAGE_SIZE, seed=0
    )
    times["data_s"] = time.perf_counter() - start

    cfg = demo_config()
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(
            cfg.data,
            train_ann=paths["train_ann"],
            train_images=paths["train_images"],
            val_ann=paths["val_ann"],
            val_images=paths["val_images"],
        ),
    )
    cfg = apply_overrides(cfg, list(overrides))

    history: list[dict[str, Any]] = []
    last_stats: list[dict[str, list[float]]] = []  # the latest evaluation, for the report
    val_results = work_dir / "val_results.json"

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, list[float]]:
        stats = evaluate_model(model, paths["val_ann"], paths["val_images"], cfg.data, progress=False, out=val_results)
        history.append({"epoch": epoch, "bbox_AP": stats["bbox"][0], "segm_AP": stats["segm"][0]})
        last_stats[:] = [stats]
        return stats

    start = time.perf_counter()
    final = train(
        cfg, work_dir / "train", resume=(work_dir / "train" / "latest.pth").exists(), device="cpu", evaluate_fn=evaluate
    )
    times["train_and_eval_s"] = time.perf_counter() - start
    model = build(final).model  # the checkpoint records the config it was trained with
    if not history:  # resumed after the last epoch had been evaluated: evaluate once more
        evaluate(model, cfg.train.epochs)
    val = json.loads(Path(paths["val_ann"]).read_text())
    for image in val["images"][:num_visualised]:
        rgb = load_image(Path(paths["val_images"]) / image["file_name"])
        det = predict(model, rgb, cfg.data)[0]
        save_visualisation(rgb, det, work_dir / "vis" / f"{Path(image['file_name']).stem}.png", 0.5)

    extra: dict[str, Any] = {}
    if report:
        start = time.perf_counter()
        steps = epoch_end_steps(work_dir / "train")
        points = [
            (steps[h["epoch"]], {"bbox_AP": h["bbox_AP"], "segm_AP": h["segm_AP"]})
            for h in history
            if h["epoch"] in steps
        ]
        page = write_report(
            work_dir / "report",
            paths["val_ann"],
            paths["val_images"],
            val_results,
            last_stats[-1],
            train_dir=work_dir / "train",
            val_points=points,
            title=f"gcnet demo: {cfg.name} on the shapes val split",
        )
        times["report_s"] = time.perf_counter() - start
        extra["report"] = str(page)

    summary = {
        "bbox_AP": history[-1]["bbox_AP"],
        "segm_AP": history[-1]["segm_AP"],
        "history": history,
        "checkpoint": str(final),
        "visualisations": str(work_dir / "vis"),
        **extra,
        **{k: round(v, 1) for k, v in times.items()},
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps(run_demo("demo_out"), indent=2))
