"""Anchors: hand-computed base anchors, grid order, validity and inside flags."""

import math

import pytest
import torch

from gcnet.boxes import AnchorGenerator, anchor_inside_flags


def test_base_anchors_stride4_hand_values():
    gen = AnchorGenerator()
    base = gen.base_anchors(4)
    # ratio = h / w; area (4*8)^2 = 1024; ratio 0.5 -> w = 32 / sqrt(0.5) = 45.2548, h = 22.6274
    w05, h05 = 32 * math.sqrt(2.0), 32 / math.sqrt(2.0)
    expected = torch.tensor(
        [
            [-w05 / 2, -h05 / 2, w05 / 2, h05 / 2],
            [-16.0, -16.0, 16.0, 16.0],
            [-h05 / 2, -w05 / 2, h05 / 2, w05 / 2],
        ]
    )
    torch.testing.assert_close(base, expected)
    widths = base[:, 2] - base[:, 0]
    assert widths[0].item() == pytest.approx(45.2548, abs=1e-4)
    assert widths[2].item() == pytest.approx(22.6274, abs=1e-4)
    # centred at 0 and not rounded
    torch.testing.assert_close(base[:, :2] + base[:, 2:], torch.zeros(3, 2))
    assert gen.num_anchors_per_location == 3


def test_base_anchors_ratio_major_then_scale():
    gen = AnchorGenerator(strides=(16,), scales=(2.0, 4.0), ratios=(1.0, 4.0))
    base = gen.base_anchors(16)
    sizes = [(32, 32), (64, 64), (16, 64), (32, 128)]  # (w, h): ratio 1 s2, ratio 1 s4, ratio 4 s2, ratio 4 s4
    for row, (w, h) in zip(base.tolist(), sizes):
        assert row == pytest.approx([-w / 2, -h / 2, w / 2, h / 2])


def test_grid_order_location_major():
    gen = AnchorGenerator(strides=(8, 16))
    levels = gen.grid_anchors([(2, 3), (1, 2)], device="cpu")
    assert [lv.shape for lv in levels] == [torch.Size([18, 4]), torch.Size([6, 4])]
    for anchors, stride, (fh, fw) in zip(levels, (8, 16), [(2, 3), (1, 2)]):
        base = gen.base_anchors(stride)
        i = 0
        for y in range(fh):
            for x in range(fw):
                for a in range(3):
                    shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=torch.float32)
                    torch.testing.assert_close(anchors[i], base[a] + shift)
                    i += 1


def test_grid_anchors_dtype_and_level_count():
    gen = AnchorGenerator(strides=(4, 8))
    out = gen.grid_anchors([(2, 2), (1, 1)], device="cpu", dtype=torch.float16)
    assert out[0].dtype == torch.float16
    with pytest.raises(ValueError, match="2 strides"):
        gen.grid_anchors([(2, 2)], device="cpu")


def test_valid_flags_use_image_pad_shape():
    gen = AnchorGenerator(strides=(16,), ratios=(1.0,))
    (flags,) = gen.valid_flags([(3, 4)], pad_shape=(32, 48), device="cpu")
    # valid rows ceil(32/16)=2 of 3, valid cols ceil(48/16)=3 of 4
    expected = torch.tensor([[y < 2 and x < 3 for x in range(4)] for y in range(3)]).reshape(-1)
    assert torch.equal(flags, expected)


def test_anchor_inside_flags():
    anchors = torch.tensor([[-1.0, 0, 10, 10], [0, 0, 20, 10], [0, 0, 19.9, 9.9], [-5, -5, 5, 5]])
    assert anchor_inside_flags(anchors, (10, 20), -1).all()
    assert anchor_inside_flags(anchors, (10, 20), 0).tolist() == [False, False, True, False]
    assert anchor_inside_flags(anchors, (10, 20), 5).tolist() == [True, True, True, True]
    with pytest.raises(ValueError, match="anchors must be"):
        anchor_inside_flags(torch.zeros(3), (10, 10), 0)
