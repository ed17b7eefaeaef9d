"""GroupedBatchSampler / ShardSampler / build_loader: grouping, coverage, sharding, epochs."""

import pytest
import torch

from gcnet.config import DataConfig
from gcnet.data import GroupedBatchSampler, ShardSampler, build_loader
from gcnet.structures import ImageMeta

FLAGS = [0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 1]  # 4 portrait, 7 landscape


def test_batches_are_single_group_and_cover_everything():
    sampler = GroupedBatchSampler(FLAGS, batch_size=2, shuffle=True, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 4  # ceil(4/2) + ceil(7/2)
    for b in batches:
        assert len({FLAGS[i] for i in b}) == 1 and 1 <= len(b) <= 2
    assert sorted(i for b in batches for i in b) == list(range(len(FLAGS)))


def test_drop_last_drops_partial_batches():
    sampler = GroupedBatchSampler(FLAGS, batch_size=2, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 3 and all(len(b) == 2 for b in batches)


def test_epoch_changes_order_and_seed_reproduces():
    a = GroupedBatchSampler(FLAGS, 2, seed=0)
    b = GroupedBatchSampler(FLAGS, 2, seed=0)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    unshuffled = list(GroupedBatchSampler(FLAGS, 2, shuffle=False))
    assert unshuffled[0] == [1, 2] and unshuffled[1] == [0, 3]  # grouped in dataset order


def test_ranks_share_one_order_and_get_disjoint_shards():
    flags = [0] * 8 + [1] * 8  # 8 global batches of 2 -> 4 per rank, no padding needed
    shards = [list(GroupedBatchSampler(flags, 2, seed=5, num_replicas=2, rank=r)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4
    seen = [i for s in shards for b in s for i in b]
    assert sorted(seen) == list(range(16))
    full = list(GroupedBatchSampler(flags, 2, seed=5))
    assert shards[0] == full[0::2] and shards[1] == full[1::2]


def test_uneven_shards_are_padded_to_equal_length():
    samplers = [GroupedBatchSampler(FLAGS, 2, seed=1, num_replicas=4, rank=r) for r in range(4)]
    lengths = [len(list(s)) for s in samplers]
    assert lengths == [len(s) for s in samplers] == [2, 2, 2, 2]  # 6 batches padded to 8
    seen = {i for s in samplers for b in s for i in b}
    assert seen == set(range(len(FLAGS)))


def test_shard_sampler_sees_each_index_once():
    parts = [list(ShardSampler(10, 3, r)) for r in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(ValueError):
        ShardSampler(10, 2, 2)


class _Tiny(torch.utils.data.Dataset):
    aspect_ratio_flags = [0, 1, 0, 1, 1]

    def __len__(self):
        return 5

    def __getitem__(self, i):
        h, w = (20, 10) if self.aspect_ratio_flags[i] == 0 else (10, 20)
        return torch.full((3, h, w), float(i)), ImageMeta((h, w), (h, w), (1.0, 1.0), image_id=i), None


def test_build_loader_train_and_test():
    cfg = DataConfig(images_per_gpu=2, workers_per_gpu=0, size_divisor=32)
    train = list(build_loader(_Tiny(), cfg, train=True))
    assert sum(len(b.metas) for b in train) == 5
    for batch in train:
        assert tuple(batch.images.shape[-2:]) == (32, 32)
        shapes = {m.img_shape for m in batch.metas}
        assert len(shapes) == 1
    test = list(build_loader(_Tiny(), cfg, train=False))
    assert [b.metas[0].image_id for b in test] == [0, 1, 2, 3, 4]


def test_batches_pin_every_tensor_for_asynchronous_copies(monkeypatch):
    """The DataLoader pins only objects with a ``pin_memory`` method; a Batch must pin its images
    and every target tensor (pinning itself needs CUDA, so it is recorded here instead)."""
    from gcnet.structures import Batch, Targets

    pinned = []

    def fake_pin(self, *args, **kwargs):
        pinned.append(self)
        return self.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    meta = ImageMeta((4, 4), (4, 4), (1.0, 1.0))
    targets = [Targets(torch.ones(1, 4), torch.zeros(1, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.uint8))]
    batch = Batch(torch.randn(1, 3, 4, 4), [meta], targets)
    out = torch.utils.data._utils.pin_memory.pin_memory(batch)  # what the loader's pinning thread calls
    assert isinstance(out, Batch) and out.metas == [meta]
    pinned_ids = {id(t) for t in pinned}
    assert pinned_ids == {id(batch.images), id(targets[0].boxes), id(targets[0].labels), id(targets[0].masks)}
    assert torch.equal(out.images, batch.images) and torch.equal(out.targets[0].masks, targets[0].masks)
