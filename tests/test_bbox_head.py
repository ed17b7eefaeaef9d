"""Shared2FCBBoxHead: keys, init, flatten order, background-last softmax, delta gather and decode."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.boxes import DeltaXYWHBBoxCoder
from gcnet.models.roi.bbox_head import Shared2FCBBoxHead, decode_all_classes, regress_by_label, select_deltas
from gcnet.models.roi.inference import multiclass_nms


def test_keys_and_shapes_match_the_original() -> None:
    shapes = {k: tuple(v.shape) for k, v in Shared2FCBBoxHead(80).state_dict().items()}
    assert shapes == {
        "shared_fcs.0.weight": (1024, 12544),
        "shared_fcs.0.bias": (1024,),
        "shared_fcs.1.weight": (1024, 1024),
        "shared_fcs.1.bias": (1024,),
        "fc_cls.weight": (81, 1024),
        "fc_cls.bias": (81,),
        "fc_reg.weight": (320, 1024),
        "fc_reg.bias": (320,),
    }
    agnostic = Shared2FCBBoxHead(80, reg_class_agnostic=True)
    assert tuple(agnostic.fc_reg.weight.shape) == (4, 1024)


def test_init_statistics() -> None:
    torch.manual_seed(0)
    head = Shared2FCBBoxHead(80, in_channels=16, fc_channels=512)
    assert head.fc_cls.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert head.fc_reg.weight.std().item() == pytest.approx(0.001, rel=0.05)
    for fc in head.shared_fcs:
        fan_out, fan_in = fc.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform
        assert fc.weight.abs().max().item() <= bound
        assert fc.weight.abs().max().item() > 0.95 * bound
    for m in (*head.shared_fcs, head.fc_cls, head.fc_reg):
        assert torch.count_nonzero(m.bias) == 0


def test_flatten_order_is_channel_height_width() -> None:
    head = Shared2FCBBoxHead(2, in_channels=3, roi_size=7, fc_channels=4)
    x = torch.rand(1, 3, 7, 7)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        c, h, w = 2, 5, 1
        head.shared_fcs[0].weight[0, c * 49 + h * 7 + w] = 1.0
        head.shared_fcs[1].weight[0, 0] = 1.0
        head.fc_cls.weight[0, 0] = 1.0
    cls, _ = head(x)
    assert cls[0, 0].item() == pytest.approx(x[0, c, h, w].item())


def test_background_is_the_last_logit() -> None:
    # Bias-only head: background (index C) dominates, so foreground probabilities fall below 0.05.
    head = Shared2FCBBoxHead(3, in_channels=1, roi_size=1, fc_channels=2)
    with torch.no_grad():
        head.fc_cls.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    cls, reg = head(torch.zeros(2, 1, 1, 1))
    assert cls.shape == (2, 4) and reg.shape == (2, 12)
    probs = torch.softmax(cls, -1)
    assert probs[0, 3].item() == pytest.approx(math.exp(5) / (math.exp(5) + 3))
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    kept, _, _ = multiclass_nms(boxes, probs, 0.05, 0.5, 100)
    assert kept.shape == (0, 4)


def test_select_deltas_gathers_columns_of_the_label() -> None:
    deltas = torch.arange(2 * 12, dtype=torch.float32).view(2, 12)  # 3 classes
    got = select_deltas(deltas, torch.tensor([2, 0]))
    assert got.tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    agnostic = torch.rand(2, 4)
    assert torch.equal(select_deltas(agnostic, torch.tensor([2, 0])), agnostic)


def test_decode_all_classes_by_hand() -> None:
    coder = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    box = torch.tensor([[10.0, 20.0, 30.0, 60.0]])  # centre (20, 40), size (20, 40)
    # class 0: no change; class 1: dx = 1 (x shifted by 0.1 * 20 = 2), dw = 1 (w * e^0.2)
    deltas = torch.tensor([[0.0, 0, 0, 0, 1.0, 0, 1.0, 0]])
    out = decode_all_classes(coder, box, deltas, max_shape=(100, 100))
    assert out.shape == (1, 2, 4)
    torch.testing.assert_close(out[0, 0], box[0])
    w = 20 * math.exp(0.2)
    want = torch.tensor([22 - w / 2, 20.0, 22 + w / 2, 60.0])
    torch.testing.assert_close(out[0, 1], want)
    # clipped to the image: x to [0, w], y to [0, h]
    clipped = decode_all_classes(coder, box, torch.tensor([[0.0, 0, 0, 0, -60.0, 0, 0, 0]]), max_shape=(50, 25))
    assert clipped[0, 1].tolist() == pytest.approx([0.0, 20.0, 0.0, 50.0])
    moved = regress_by_label(coder, box, deltas, torch.tensor([1]), (100, 100))
    torch.testing.assert_close(moved[0], want)
