"""Training engine: schedule, distributed/SyncBN, AMP, gradient accumulation, checkpoints, logs."""

from gcnet.engine.checkpointer import Checkpointer, capture_rng_state, restore_rng_state
from gcnet.engine.distributed import (
    EXIT_RANK_LOST,
    DistContext,
    RankLostError,
    find_free_port,
    get_rank,
    get_world_size,
    init_distributed,
    teardown_distributed,
    unwrap,
    wrap_ddp,
)
from gcnet.engine.launch import LoaderWorkerDied, train, with_dataset_classes
from gcnet.engine.logger import TrainLogger
from gcnet.engine.schedule import LRSchedule, build_optimizer, lr_at, scaled_lr, total_batch_size
from gcnet.engine.sync_bn import SyncBatchNorm2d, convert_sync_batchnorm
from gcnet.engine.trainer import (
    NonFiniteLossError,
    Trainer,
    TrainingStopped,
    TrainState,
    coco_metrics,
    seed_everything,
    sum_losses,
)

__all__ = [
    "EXIT_RANK_LOST",
    "Checkpointer",
    "DistContext",
    "LRSchedule",
    "LoaderWorkerDied",
    "NonFiniteLossError",
    "RankLostError",
    "SyncBatchNorm2d",
    "TrainLogger",
    "TrainState",
    "Trainer",
    "TrainingStopped",
    "build_optimizer",
    "capture_rng_state",
    "coco_metrics",
    "convert_sync_batchnorm",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "lr_at",
    "restore_rng_state",
    "scaled_lr",
    "seed_everything",
    "sum_losses",
    "teardown_distributed",
    "total_batch_size",
    "train",
    "unwrap",
    "with_dataset_classes",
    "wrap_ddp",
]
