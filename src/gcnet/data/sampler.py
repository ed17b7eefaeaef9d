"""Aspect-ratio grouped, distributed batch sampling (the original's GroupSampler /
AspectRatioBatchSampler: every batch holds images of one orientation, w >= h or w < h), and the
evaluation loader that goes on past an image it cannot read."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from gcnet.data.collate import collate
from gcnet.data.config import DataConfig
from gcnet.image_io import DatasetError
from gcnet.structures import Batch


class GroupedBatchSampler(Sampler[list[int]]):
    """Yield batches of dataset indices whose images share a group flag.

    One shuffled order (seeded by ``seed + epoch``, identical on every rank) is cut into
    per-group batches as images arrive; the batch list is padded by repeating its first batches
    to a multiple of ``num_replicas`` (or truncated with ``drop_last``), and rank ``r`` takes
    batches ``r, r + R, ...``, so all ranks run the same number of iterations and, apart from
    that padding, see disjoint images. ``drop_last`` also drops each group's final partial batch
    (kept otherwise: mmdet 3.x instead mixes the groups' leftovers into full batches).
    """

    def __init__(
        self,
        dataset_flags: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"GroupedBatchSampler: batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"GroupedBatchSampler: bad rank {rank} for num_replicas {num_replicas}")
        self.flags = [int(f) for f in dataset_flags]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the shuffle of the next iteration (call once per epoch on every rank)."""
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        n = len(self.flags)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen).tolist()
        else:
            order = list(range(n))
        buckets: dict[int, list[int]] = {}
        batches: list[list[int]] = []
        for idx in order:
            bucket = buckets.setdefault(self.flags[idx], [])
            bucket.append(idx)
            if len(bucket) == self.batch_size:
                batches.append(bucket.copy())
                bucket.clear()
        if not self.drop_last:
            batches.extend(b for b in buckets.values() if b)
        return batches

    def _num_global_batches(self) -> int:
        counts: dict[int, int] = {}
        for f in self.flags:
            counts[f] = counts.get(f, 0) + 1
        if self.drop_last:
            return sum(c // self.batch_size for c in counts.values())
        return sum(-(-c // self.batch_size) for c in counts.values())

    def __len__(self) -> int:
        total = self._num_global_batches()
        if self.drop_last:
            return total // self.num_replicas
        return -(-total // self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        per_rank = len(self)
        wanted = per_rank * self.num_replicas
        if batches and len(batches) < wanted:
            reps = -(-wanted // len(batches))
            batches = (batches * reps)[:wanted]
        batches = batches[:wanted]
        yield from batches[self.rank :: self.num_replicas]


class ShardSampler(Sampler[int]):
    """Sequential, unpadded shard ``rank, rank + R, ...`` for distributed evaluation
    (every image is seen exactly once over all ranks; gather the results afterwards)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"ShardSampler: bad rank {rank} for num_replicas {num_replicas}")
        self.length, self.num_replicas, self.rank = length, num_replicas, rank

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.num_replicas))


class Skipped(NamedTuple):
    """A sample that could not be read: its dataset index and the one-line reason."""

    position: int
    message: str


class SkipUnreadable(Dataset):
    """``dataset``'s samples, with a :class:`Skipped` where one raises :class:`DatasetError` (an
    image that cannot be decoded or went missing), so that evaluation goes on without it instead
    of ending the run, and a loader worker hands back the reason rather than a traceback."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except DatasetError as err:
            return Skipped(index, str(err))


def collate_skipping(samples: Sequence[Any], size_divisor: int = 32) -> tuple[Batch | None, list[Skipped]]:
    """(the batch of the samples that were read or None, the :class:`Skipped` ones)."""
    skipped = [s for s in samples if isinstance(s, Skipped)]
    kept = [s for s in samples if not isinstance(s, Skipped)]
    return (collate(kept, size_divisor=size_divisor) if kept else None), skipped


def _dist_info(distributed: bool) -> tuple[int, int]:
    """(world size, rank) of the process group when ``distributed`` and one exists, else (1, 0)."""
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def build_loader(
    dataset: Dataset,
    cfg: DataConfig,
    train: bool,
    distributed: bool = False,
    batch_size: int | None = None,
    seed: int = 0,
    skip_unreadable: bool = False,
) -> DataLoader:
    """DataLoader as the original sets it up: grouped shuffled batches of ``cfg.images_per_gpu``
    for training; sequential batches (default 1 image, as the original tests) for evaluation,
    sharded over ranks when ``distributed``. Workers = ``cfg.workers_per_gpu`` (persistent),
    pinned memory when CUDA is available. Flip randomness in workers derives from torch's global
    seed, so ``torch.manual_seed`` in the main process reproduces it. With ``skip_unreadable``
    (evaluation) each item is ``(Batch or None, [Skipped])``: see :class:`SkipUnreadable`."""
    world, rank = _dist_info(distributed)
    size = batch_size if batch_size is not None else (cfg.images_per_gpu if train else 1)
    if train:
        flags = getattr(dataset, "aspect_ratio_flags", None)
        if flags is None:
            flags = [0] * len(dataset)  # type: ignore[arg-type]
        batch_sampler: Sampler[list[int]] = GroupedBatchSampler(
            flags, size, shuffle=True, seed=seed, num_replicas=world, rank=rank
        )
    else:
        batch_sampler = BatchSampler(ShardSampler(len(dataset), world, rank), size, drop_last=False)  # type: ignore[arg-type]
    workers = max(0, int(cfg.workers_per_gpu))
    return DataLoader(
        SkipUnreadable(dataset) if skip_unreadable else dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=partial(collate_skipping if skip_unreadable else collate, size_divisor=cfg.size_divisor),
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )
