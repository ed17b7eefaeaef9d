"""The 1x schedule: SGD, linear warm-up, step decay at epoch milestones.

The learning rate is a pure function of (epoch, iteration inside the epoch), so a resumed run sets
exactly the rate the uninterrupted run would have used (the original's ``LrUpdaterHook`` with
``policy='step', warmup='linear'`` computes it the same way from the runner's counters).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gcnet.config import TrainConfig


def total_batch_size(cfg: TrainConfig, images_per_gpu: int, world_size: int) -> int:
    """Images per optimiser step over all processes (images_per_gpu x world_size x grad_accum)."""
    if images_per_gpu < 1 or world_size < 1 or cfg.grad_accum < 1:
        raise ValueError(
            f"images_per_gpu ({images_per_gpu}), world_size ({world_size}) and "
            f"train.grad_accum ({cfg.grad_accum}) must all be >= 1"
        )
    return images_per_gpu * world_size * cfg.grad_accum


def scaled_lr(cfg: TrainConfig, images_per_gpu: int, world_size: int) -> float:
    """``cfg.lr`` scaled linearly by total batch / ``base_batch_size`` when ``scale_lr`` is set.

    The rule of the original's ``auto_scale_lr`` (lr 0.02 is for 8 GPUs x 2 images = 16), which the
    original leaves off unless asked (``--auto-scale-lr``); gcnet's default turns it on, so fewer GPUs
    do not train with an lr 8x too large for their batch. ``scale_lr=False`` is the original's default.
    """
    if not cfg.scale_lr:
        return float(cfg.lr)
    if cfg.base_batch_size < 1:
        raise ValueError(f"train.base_batch_size must be >= 1, got {cfg.base_batch_size}")
    return cfg.lr * total_batch_size(cfg, images_per_gpu, world_size) / cfg.base_batch_size


def lr_at(cfg: TrainConfig, base_lr: float, epoch: int, iter_in_epoch: int, iters_per_epoch: int) -> float:
    """Learning rate of the optimiser step ``iter_in_epoch`` (0-based) of epoch ``epoch`` (0-based).

    Step decay: x gamma for every milestone m with ``epoch >= m`` (0.02 for epochs 1-8, 0.002 for
    9-11, 0.0002 for 12 with milestones (8, 11)). Warm-up on the global step t < warmup_iters
    multiplies that by ``warmup_ratio + (1 - warmup_ratio) * t / warmup_iters``.
    """
    if epoch < 0 or iter_in_epoch < 0 or iters_per_epoch < 1:
        raise ValueError(
            f"lr_at: need epoch >= 0, iter_in_epoch >= 0, iters_per_epoch >= 1; got "
            f"{epoch}, {iter_in_epoch}, {iters_per_epoch}"
        )
    decays = sum(1 for m in cfg.milestones if epoch >= m)
    lr = base_lr * cfg.gamma**decays
    step = epoch * iters_per_epoch + iter_in_epoch
    if cfg.warmup_iters > 0 and step < cfg.warmup_iters:
        lr *= cfg.warmup_ratio + (1.0 - cfg.warmup_ratio) * step / cfg.warmup_iters
    return lr


class LRSchedule:
    """Sets every parameter group's lr from :func:`lr_at`; its state is the few numbers it needs."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, base_lr: float, iters_per_epoch: int
    ) -> None:
        self.optimizer = optimizer
        self.cfg = cfg
        self.base_lr = float(base_lr)
        self.iters_per_epoch = int(iters_per_epoch)
        self.last_lr = self.base_lr

    def set(self, epoch: int, iter_in_epoch: int) -> float:
        """Set and return the lr for the step about to run."""
        lr = lr_at(self.cfg, self.base_lr, epoch, iter_in_epoch, self.iters_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.last_lr = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lr": self.base_lr,
            "iters_per_epoch": self.iters_per_epoch,
            "last_lr": self.last_lr,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore; a different ``iters_per_epoch`` means the data changed and resume is not exact."""
        if int(state["iters_per_epoch"]) != self.iters_per_epoch:
            raise ValueError(
                f"checkpoint schedule has {state['iters_per_epoch']} iterations per epoch, this run "
                f"has {self.iters_per_epoch}: the dataset, batch size or world size changed"
            )
        self.base_lr = float(state["base_lr"])
        self.last_lr = float(state["last_lr"])


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every trainable parameter (the original has no
    paramwise settings: BN and biases are decayed too)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
