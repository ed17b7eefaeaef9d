"""ImageMeta.pad_shape: the image's own padded extent (what the RPN's valid anchors follow)."""

import dataclasses

import pytest
import torch

from gcnet.data.collate import collate
from gcnet.structures import DEFAULT_SIZE_DIVISOR, ImageMeta


def test_pad_shape_defaults_to_img_shape_rounded_up_to_32():
    assert DEFAULT_SIZE_DIVISOR == 32
    assert ImageMeta((20, 33), (40, 66), (0.5, 0.5)).pad_shape == (32, 64)
    assert ImageMeta((64, 96), (64, 96), (1.0, 1.0)).pad_shape == (64, 96)
    assert ImageMeta((20, 33), (20, 33), (1.0, 1.0), pad_shape=(20, 40)).pad_shape == (20, 40)
    with pytest.raises(ValueError, match="pad_shape"):
        ImageMeta((20, 33), (20, 33), (1.0, 1.0), pad_shape=(16, 40))


def test_collate_sets_each_image_own_pad_shape():
    metas = [ImageMeta((20, 70), (20, 70), (1.0, 1.0)), ImageMeta((65, 30), (65, 30), (1.0, 1.0))]
    samples = [(torch.zeros(3, *m.img_shape), m, None) for m in metas]
    batch = collate(samples, size_divisor=64)
    assert batch.images.shape[-2:] == (128, 128)  # the batch pads to its largest image
    assert [m.pad_shape for m in batch.metas] == [(64, 128), (128, 64)]  # each image to its own
    assert [dataclasses.replace(m, pad_shape=None) for m in batch.metas] == metas  # all else kept
    assert [m.pad_shape for m in collate(samples, size_divisor=0).metas] == [(20, 70), (65, 30)]
