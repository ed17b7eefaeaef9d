"""Evaluate a model on a COCO-format set: inference over a loader, results gathered, COCO AP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from gcnet.data import CocoDetection, build_loader
from gcnet.data.config import DataConfig
from gcnet.evaluation.coco_eval import evaluate_coco
from gcnet.evaluation.results import detections_to_coco, gather_results


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    ann_file: str | Path,
    image_dir: str | Path,
    data_cfg: DataConfig = DataConfig(),
    batch_size: int = 1,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """COCO bbox + segm AP of ``model`` on a COCO-format set (each rank takes a disjoint, unpadded
    shard when distributed; results gathered and evaluated once, on rank 0, which returns the
    stats; other ranks get {})."""
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    dataset = CocoDetection(ann_file, image_dir, data_cfg, train=False)
    loader = build_loader(dataset, data_cfg, train=False, distributed=distributed, batch_size=batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="test", disable=not progress or rank != 0, dynamic_ncols=True):
        batch = batch.to(device)
        detections = model(batch.images, batch.metas)
        ids = [int(m.image_id) for m in batch.metas]  # type: ignore[arg-type]
        results.extend(detections_to_coco(detections, ids, dataset.label_to_cat_id))
    model.train(was_training)
    results = gather_results(results)
    if rank != 0:
        return {}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results))
    iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or not results else ("bbox",)
    return evaluate_coco(str(ann_file), results, iou_types=iou_types)  # a CocoStats: its .details feed the per-class AP
