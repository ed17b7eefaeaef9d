"""FCNMaskHead keys/init, mask targets (aligned RoIAlign crop of gt bitmaps) and the mask loss."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.models.roi.mask_head import FCNMaskHead
from gcnet.models.roi.targets import mask_loss, mask_targets


def test_keys_shapes_and_output_size() -> None:
    head = FCNMaskHead(80, in_channels=256)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    expected = {}
    for i in range(4):
        expected[f"convs.{i}.conv.weight"] = (256, 256, 3, 3)
        expected[f"convs.{i}.conv.bias"] = (256,)
    expected.update(
        {
            "upsample.weight": (256, 256, 2, 2),
            "upsample.bias": (256,),
            "conv_logits.weight": (80, 256, 1, 1),
            "conv_logits.bias": (80,),
        }
    )
    assert shapes == expected
    small = FCNMaskHead(3, in_channels=4, conv_channels=4, num_convs=1)
    assert small(torch.rand(2, 4, 14, 14)).shape == (2, 3, 28, 28)


def test_kaiming_fan_out_init_and_zero_bias() -> None:
    torch.manual_seed(0)
    head = FCNMaskHead(80, in_channels=64, conv_channels=64, num_convs=1)
    conv = head.convs[0].conv
    # kaiming normal, fan_out = out_channels * k * k, gain sqrt(2)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.05)
    assert head.conv_logits.weight.std().item() == pytest.approx(math.sqrt(2 / 80), rel=0.05)
    for m in (conv, head.upsample, head.conv_logits):
        assert torch.count_nonzero(m.bias) == 0


def test_upsample_is_deconv_then_relu() -> None:
    head = FCNMaskHead(1, in_channels=1, conv_channels=1, num_convs=0)
    with torch.no_grad():
        head.upsample.weight.fill_(1.0)
        head.upsample.bias.fill_(0.0)
        head.conv_logits.weight.fill_(1.0)
        head.conv_logits.bias.fill_(0.0)
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.5]]]])
    out = head(x)
    # each input pixel becomes a 2x2 block; negative values are cut by the ReLU before the logits
    want = torch.tensor([[1.0, 0.0], [3.0, 0.5]]).repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(out[0, 0], want)


def test_mask_targets_crop_the_assigned_gt() -> None:
    masks = torch.zeros(2, 16, 16, dtype=torch.uint8)
    masks[0, :, :4] = 1  # gt 0: left 4 columns
    masks[1, 8:, :] = 1  # gt 1: bottom half
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [0.0, 0.0, 16.0, 16.0], [0.0, 0.0, 8.0, 8.0]])
    t = mask_targets(masks, boxes, torch.tensor([0, 1, 1]), size=4)
    # box 0 on gt 0: the left half of the 4x4 grid; box 1 on gt 1: the bottom half; box 2 sees nothing of gt 1
    want0 = torch.tensor([[1.0, 1, 0, 0]] * 4)
    want1 = torch.tensor([[0.0] * 4] * 2 + [[1.0] * 4] * 2)
    assert torch.equal(t[0], want0)
    assert torch.equal(t[1], want1)
    assert torch.equal(t[2], torch.zeros(4, 4))
    assert mask_targets(masks, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 28).shape == (0, 28, 28)


def test_mask_targets_binarise_at_half() -> None:
    # An edge at a non-integer position: a target cell is 1 iff its average coverage is >= 0.5.
    masks = torch.zeros(1, 8, 8, dtype=torch.uint8)
    masks[0, :, :3] = 1
    t = mask_targets(masks, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), torch.tensor([0]), size=2)
    # bin 0 covers x in [0, 4): bilinear samples at x = 0.5..3.5 -> coverage 3/4 >= 0.5; bin 1 -> 0
    assert t[0].tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_mask_loss_uses_the_gt_class_channel() -> None:
    logits = torch.tensor([[[[2.0]], [[-1.0]]], [[[0.5]], [[3.0]]]])  # [2 rois, 2 classes, 1, 1]
    targets = torch.tensor([[[1.0]], [[0.0]]])
    labels = torch.tensor([1, 0])

    def bce(x: float, y: float) -> float:
        p = 1 / (1 + math.exp(-x))
        return -(y * math.log(p) + (1 - y) * math.log(1 - p))

    want = (bce(-1.0, 1.0) + bce(0.5, 0.0)) / 2
    assert mask_loss(logits, targets, labels).item() == pytest.approx(want, rel=1e-6)
    empty = torch.zeros(0, 2, 1, 1, requires_grad=True)
    zero = mask_loss(empty, torch.zeros(0, 1, 1), torch.zeros(0, dtype=torch.long))
    assert zero.item() == 0.0 and zero.requires_grad
