"""``train(cfg, work_dir)``: build data, model and trainer from a :class:`Config` and run it.

Works as a plain single process or under ``torchrun`` (one process per GPU, or gloo on CPU).
A work dir that holds checkpoints is continued (``resume``) or started over (``overwrite``), never
silently mixed with a new run; ``train.load_from`` starts from a trained model's weights. Workers
that torchrun restarted (``--max-restarts``) resume by themselves. A rank that loses the others
(one died or hangs past ``train.dist_timeout_s``) stops with :class:`RankLostError`.
"""

from __future__ import annotations

import os
import re
import shutil
from functools import partial
from pathlib import Path

import torch

from gcnet.build import locate_checkpoint
from gcnet.checkpoint import load_for_finetuning, read_checkpoint, recorded_class_names
from gcnet.config import Config, with_class_names
from gcnet.data import CocoDetection, GroupedBatchSampler, collate, read_coco_json
from gcnet.engine.checkpointer import Checkpointer
from gcnet.engine.distributed import as_rank_lost, barrier, init_distributed, restart_count, teardown_distributed
from gcnet.engine.logger import LOG_FILE
from gcnet.engine.trainer import EvaluateFn, Trainer, TrainingStopped, seed_everything
from gcnet.models.detector import TwoStageDetector, build_model
from gcnet.structures import category_ids_for


def train(
    cfg: Config,
    work_dir: str | os.PathLike[str],
    resume: bool = False,
    device: torch.device | str | None = None,
    evaluate_fn: EvaluateFn | None = None,
    overwrite: bool = False,
) -> Path:
    """Train ``cfg``'s detector on ``cfg.data.train_ann`` / ``train_images``; returns the final
    checkpoint path (``work_dir/epoch_{epochs}.pth``, or ``latest.pth`` when ``train.patience``
    stopped it). A signal (SIGINT, SIGTERM) saves and raises :class:`TrainingStopped`.

    The classes are the training set's categories (:func:`with_dataset_classes`). ``evaluate_fn(model,
    epoch)`` runs on every rank every ``train.eval_interval`` epochs (shard or skip inside it as
    needed); the COCO stats it returns are logged and drive ``train.save_best`` / ``patience``.
    Weights: ``resume`` (the work dir's newest readable checkpoint), else ``train.load_from``
    (fine-tuning: what fits loads, the class layers start afresh), else ImageNet weights from the
    model builder (``cfg.model.backbone.pretrained``; None = random init). A work dir that holds
    checkpoints needs ``resume`` or ``overwrite`` (which deletes them and the logs). Under a torchrun
    restart (``TORCHELASTIC_RESTART_COUNT`` > 0) it resumes, whatever was asked: the first attempt
    already started over, and what it saved since is this run's. A failed collective (a rank died,
    or did not answer within ``train.dist_timeout_s``) raises :class:`RankLostError`.
    """
    ann_file, image_dir = cfg.data.train_ann, cfg.data.train_images
    if ann_file is None or image_dir is None:
        raise ValueError(
            "train: cfg.data.train_ann and cfg.data.train_images must be set "
            "(e.g. --set data.train_ann=.../instances_train2017.json)"
        )
    restarts = restart_count()
    if restarts:
        resume, overwrite = True, False
    checkpointer = Checkpointer(work_dir)
    _check_work_dir(checkpointer, resume, overwrite)
    cfg = with_dataset_classes(cfg)
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    finished = False
    try:
        ctx = init_distributed(device, cfg.train.dist_timeout_s)
        if restarts and ctx.rank == 0:
            print(f"restart {restarts} of the workers (torchrun): resuming from the newest checkpoint")
        if overwrite and ctx.rank == 0:
            _start_over(checkpointer)
        barrier()
        start_from = None if cfg.train.load_from is None else _fetch(cfg.train.load_from, cfg.name, ctx.rank)
        seed_everything(cfg.train.seed, ctx.rank)
        dataset = CocoDetection(ann_file, image_dir, cfg.data, train=True, with_masks=cfg.model.with_mask)
        if ctx.rank == 0:
            print(dataset.counts.line(dataset.ann_file))
        if len(dataset) == 0:
            raise ValueError(
                f"train: {cfg.data.train_ann} has no usable training images "
                "(images without annotations or smaller than data.min_size are dropped)"
            )
        sampler = GroupedBatchSampler(
            dataset.aspect_ratio_flags,
            cfg.data.images_per_gpu,
            shuffle=True,
            seed=cfg.train.seed,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
        )
        resuming = resume and bool(checkpointer.resume_candidates())
        imagenet = cfg.train.load_from is None and not resuming  # else the weights are overwritten
        model = build_model(cfg.model, cfg.class_names, load_pretrained=imagenet, category_ids=cfg.category_ids)
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
        if not (resume and trainer.resume()) and start_from is not None:
            _load_from(model, start_from, ctx.rank)
        final = trainer.fit()
        if trainer.stop_signal is not None:
            raise TrainingStopped(trainer.stop_signal, final, trainer.state.describe())
        finished = True
        return final
    except RuntimeError as err:
        if isinstance(err, TrainingStopped):
            raise
        said: RuntimeError | None = as_rank_lost(err, cfg.train.dist_timeout_s, _resume_hint(checkpointer))
        said = said or _loader_worker_died(err, checkpointer)
        if said is None:
            raise
        raise said from err
    finally:
        if owns_group:  # every rank reaches the barrier only after a normal finish
            teardown_distributed(barrier=finished)


def _check_work_dir(checkpointer: Checkpointer, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier run's checkpoints unless told what to do."""
    if resume and overwrite:
        raise ValueError("train: --resume continues a run, --overwrite starts it over: give one of them")
    existing = checkpointer.existing()
    if existing and not (resume or overwrite):
        names = ", ".join(p.name for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise ValueError(
            f"{checkpointer.work_dir} holds checkpoints of an earlier run ({names}): continue it "
            "with --resume (resume=True), or start over with --overwrite (overwrite=True), "
            "which deletes them"
        )


_WORKER_DIED = re.compile(r"^DataLoader worker \(pid")  # how torch's loader reports a dead worker


class LoaderWorkerDied(RuntimeError):
    """A data-loading worker process died mid-epoch, most often at the hands of the out-of-memory
    killer (it picks the biggest process). ``exit_code`` 1, as any failed run; resume continues."""

    exit_code = 1


def _loader_worker_died(err: RuntimeError, checkpointer: Checkpointer) -> LoaderWorkerDied | None:
    """The one-line story when ``err``, or an error it was raised while handling, is the loader's."""
    seen: BaseException | None = err
    while seen is not None:
        first = (str(seen).strip().splitlines() or [""])[0]
        if _WORKER_DIED.match(first):
            break
        seen = seen.__cause__ or seen.__context__
    else:
        return None
    return LoaderWorkerDied(
        f"{first.rstrip('.')}: a data loading worker died (a SIGKILL is most often the out-of-memory "
        f"killer; fewer data.workers_per_gpu or more memory helps); {_resume_hint(checkpointer)}"
    )


def _resume_hint(checkpointer: Checkpointer) -> str:
    """What the work dir holds to continue from, for the lost-rank line."""
    candidates = checkpointer.resume_candidates()
    if not candidates:
        return "no checkpoint was written yet"
    return f"--resume continues from {candidates[0]} (torchrun --max-restarts N restarts and resumes by itself)"


def _start_over(checkpointer: Checkpointer) -> None:
    """Delete what an earlier run wrote: its checkpoints, ``log.jsonl`` and TensorBoard events."""
    for path in checkpointer.existing():
        path.unlink()
    (checkpointer.work_dir / LOG_FILE).unlink(missing_ok=True)
    shutil.rmtree(checkpointer.work_dir / "tb", ignore_errors=True)


def _fetch(source: str, config_name: str, rank: int) -> Path:
    """The local file of ``train.load_from`` (path, URL, zoo name, or ``zoo`` for this config's
    published file), found before any slow work; rank 0 first, so a download happens once."""
    if rank == 0:
        locate_checkpoint(source, config_name)
    barrier()
    return locate_checkpoint(source, config_name)


def _load_from(model: TwoStageDetector, path: Path, rank: int) -> None:
    """Fine-tuning's start: what fits of ``path`` into the fresh model, with one summary line."""
    state_dict, meta = read_checkpoint(path)
    report = load_for_finetuning(model, state_dict, str(path), recorded_class_names(meta))
    if rank == 0:
        print(f"fine-tuning from {report.summary()}")


def with_dataset_classes(cfg: Config) -> Config:
    """``cfg`` with the class names (and head size) of its training set's categories, sorted by
    id as the dataset maps them, so that own COCO-format data trains without editing a config."""
    if cfg.data.train_ann is None:
        return cfg
    categories = sorted(read_coco_json(cfg.data.train_ann)["categories"], key=lambda c: c["id"])
    names = tuple(str(c["name"]) for c in categories)
    ids = tuple(int(c["id"]) for c in categories)
    recorded = () if list(ids) == category_ids_for(names) else ids  # () where the default rule gives them
    if names == cfg.class_names:
        return cfg if recorded == cfg.category_ids else with_class_names(cfg, names, recorded)
    print(
        f"training on the {len(names)} categories of {cfg.data.train_ann} instead of the config's "
        f"{len(cfg.class_names)}"
    )
    return with_class_names(cfg, names, recorded)
