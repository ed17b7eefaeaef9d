"""``train(cfg, work_dir)``: build data, model and trainer from a :class:`Config` and run it.

Works as a plain single process or under ``torchrun`` (one process per GPU, or gloo on CPU).
"""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Optional

import torch

from gcnet.config import Config, with_class_names
from gcnet.data import CocoDetection, GroupedBatchSampler, collate, read_coco_json
from gcnet.engine.distributed import init_distributed, teardown_distributed
from gcnet.engine.trainer import EvaluateFn, Trainer, seed_everything
from gcnet.models.detector import build_model


def train(
    cfg: Config,
    work_dir: str | os.PathLike[str],
    resume: bool = False,
    device: Optional[torch.device | str] = None,
    evaluate_fn: Optional[EvaluateFn] = None,
) -> Path:
    """Train ``cfg``'s detector on ``cfg.data.train_ann`` / ``train_images``; returns the final
    checkpoint path (``work_dir/epoch_{epochs}.pth``, or ``latest.pth`` after a SIGTERM).

    ``evaluate_fn(model, epoch)`` runs on every rank every ``train.eval_interval`` epochs (shard
    or skip inside it as needed). ImageNet weights come from the model builder
    (``cfg.model.backbone.pretrained``; None = random init).
    """
    if cfg.data.train_ann is None or cfg.data.train_images is None:
        raise ValueError("train: cfg.data.train_ann and cfg.data.train_images must be set "
                         "(e.g. --set data.train_ann=.../instances_train2017.json)")
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    ctx = init_distributed(device)
    try:
        seed_everything(cfg.train.seed, ctx.rank)
        dataset = CocoDetection(cfg.data.train_ann, cfg.data.train_images, cfg.data, train=True)
        if len(dataset) == 0:
            raise ValueError(f"train: {cfg.data.train_ann} has no usable training images "
                             "(images without annotations or smaller than data.min_size are dropped)")
        sampler = GroupedBatchSampler(
            dataset.aspect_ratio_flags,
            cfg.data.images_per_gpu,
            shuffle=True,
            seed=cfg.train.seed,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
        )
        model = build_model(cfg.model, cfg.class_names, load_pretrained=True)  # resume overwrites it
        trainer = Trainer(
            model,
            dataset,
            sampler,
            cfg,
            work_dir,
            collate_fn=partial(collate, size_divisor=cfg.data.size_divisor),
            device=ctx.device,
            evaluate_fn=evaluate_fn,
            num_workers=cfg.data.workers_per_gpu,
        )
        return trainer.fit(resume=resume)
    finally:
        if owns_group:
            teardown_distributed()


def with_dataset_classes(cfg: Config) -> Config:
    """``cfg`` with the class names (and head size) of its training set's categories, sorted by
    id as the dataset maps them, so that own COCO-format data trains without editing a config."""
    if cfg.data.train_ann is None:
        return cfg
    categories = sorted(read_coco_json(cfg.data.train_ann)["categories"], key=lambda c: c["id"])
    names = tuple(str(c["name"]) for c in categories)
    if names == cfg.class_names:
        return cfg
    print(f"training on the {len(names)} categories of {cfg.data.train_ann} instead of the config's "
          f"{len(cfg.class_names)}")
    return with_class_names(cfg, names)
