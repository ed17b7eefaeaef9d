"""Evaluate a model on a COCO-format set: inference over a loader, results gathered, COCO AP.

An image that cannot be decoded is skipped with a one-line warning and left out of the evaluation
(its ground truth too, so the numbers are those of the images that were seen), and the results are
written before the evaluation runs, so that neither a bad image nor a failed write loses the other.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from gcnet.data import CocoDetection, DatasetError, build_loader, read_coco_json
from gcnet.data.config import DataConfig
from gcnet.errors import Warn, warn_line
from gcnet.evaluation.coco_eval import evaluate_coco
from gcnet.evaluation.results import detections_to_coco, gather_results
from gcnet.paths import check_output_file, write_json


def _ground_truth_without(ann_file: str | Path, skipped: set[int]) -> dict[str, Any]:
    """The annotation json without the skipped images and their annotations."""
    data = read_coco_json(ann_file)
    data["images"] = [im for im in data["images"] if int(im["id"]) not in skipped]
    data["annotations"] = [a for a in data.get("annotations", []) if int(a["image_id"]) not in skipped]
    return data


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    ann_file: str | Path,
    image_dir: str | Path,
    data_cfg: DataConfig = DataConfig(),
    batch_size: int = 1,
    out: str | Path | None = None,
    progress: bool = True,
    on_skip: Warn | None = None,
) -> dict[str, list[float]]:
    """COCO bbox + segm AP of ``model`` on a COCO-format set (each rank takes a disjoint, unpadded
    shard when distributed; results gathered and evaluated once, on rank 0, which returns the
    stats; other ranks get {}).

    ``out`` (checked before any work) receives the COCO results json. An image that cannot be
    decoded is reported by ``on_skip(message)`` (default: a warning line) on the rank that met it
    and left out of the evaluation; a stop midway (Ctrl-C, a crash) still writes the results so far
    to ``out`` when not distributed.
    """
    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    if out is not None and rank == 0:
        check_output_file(out)
    warn = on_skip or warn_line
    dataset = CocoDetection(ann_file, image_dir, data_cfg, train=False)
    loader = build_loader(
        dataset, data_cfg, train=False, distributed=distributed, batch_size=batch_size, skip_unreadable=True
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    skipped: list[int] = []
    try:
        for batch, unread in tqdm(loader, desc="test", disable=not progress or rank != 0, dynamic_ncols=True):
            for item in unread:
                skipped.append(dataset.image_ids[item.position])
                warn(f"{item.message}; skipped")
            if batch is None:
                continue
            batch = batch.to(device)
            detections = model(batch.images, batch.metas)
            ids = [int(m.image_id) for m in batch.metas]
            results.extend(detections_to_coco(detections, ids, dataset.label_to_cat_id))
    except BaseException:
        if out is not None and not distributed:
            with contextlib.suppress(OSError):
                write_json(out, results)
                warn(f"{out}: the results of the images done so far, written before stopping")
        raise
    finally:
        model.train(was_training)
    results = gather_results(results)
    skipped = gather_results(skipped)
    if rank != 0:
        return {}
    write_error: OSError | None = None
    if out is not None:
        try:
            write_json(out, results)
        except OSError as err:  # evaluate anyway: the numbers are not lost with the file
            write_error = err
    if len(skipped) == len(dataset):
        raise DatasetError(f"{image_dir}: none of the {len(dataset)} images of {ann_file} could be read")
    gt: Any = str(ann_file)
    if skipped:
        gt = _ground_truth_without(ann_file, set(skipped))
        if progress:
            print(
                f"evaluated on {len(dataset) - len(skipped)} of {len(dataset)} images "
                f"({len(skipped)} could not be read)"
            )
    iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or not results else ("bbox",)
    stats = evaluate_coco(gt, results, iou_types=iou_types)  # a CocoStats: its .details feed the per-class AP
    if write_error is not None:
        raise write_error
    return stats
