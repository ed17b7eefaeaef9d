"""Delta coder: hand-computed encode/decode, round trip, clamp, clip, stds."""

import math

import pytest
import torch

from gcnet.boxes import DeltaXYWHBBoxCoder


def test_encode_hand_values():
    coder = DeltaXYWHBBoxCoder()
    d = coder.encode(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[2.0, 4, 12, 24]]))
    # px=5, gx=7, pw=10 -> 0.2; py=5, gy=14 -> 0.9; gw/pw=1 -> 0; gh/ph=2 -> log 2
    torch.testing.assert_close(d, torch.tensor([[0.2, 0.9, 0.0, math.log(2.0)]]))
    coder2 = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    d2 = coder2.encode(torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[2.0, 4, 12, 24]]))
    torch.testing.assert_close(d2, torch.tensor([[2.0, 9.0, 0.0, math.log(2.0) / 0.2]]))


def test_decode_hand_values_and_clip():
    coder = DeltaXYWHBBoxCoder()
    box = torch.tensor([[0.0, 0, 10, 20]])
    delta = torch.tensor([[0.1, -0.2, math.log(2.0), 0.0]])
    # centre (5 + 1, 10 - 4) = (6, 6); size (20, 20)
    torch.testing.assert_close(coder.decode(box, delta), torch.tensor([[-4.0, -4.0, 16.0, 16.0]]))
    # max_shape = (h, w) = (12, 15): x in [0, 15], y in [0, 12]
    torch.testing.assert_close(coder.decode(box, delta, max_shape=(12, 15)), torch.tensor([[0.0, 0.0, 15.0, 12.0]]))


def test_decode_clamps_log_size():
    coder = DeltaXYWHBBoxCoder()
    box = torch.tensor([[0.0, 0, 1, 1]])
    out = coder.decode(box, torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    w, h = (out[0, 2] - out[0, 0]).item(), (out[0, 3] - out[0, 1]).item()
    assert w == pytest.approx(1000 / 16, rel=1e-5)
    assert h == pytest.approx(16 / 1000, rel=1e-4)


def test_round_trip_with_stds():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    xy2 = torch.rand(50, 2, generator=g) * 100
    gts = torch.cat([xy2, xy2 + 1 + torch.rand(50, 2, generator=g) * 50], 1)
    for stds in [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2)]:
        coder = DeltaXYWHBBoxCoder(stds=stds)
        torch.testing.assert_close(coder.decode(boxes, coder.encode(boxes, gts)), gts, atol=1e-3, rtol=1e-5)


def test_multi_class_decode_matches_per_class():
    coder = DeltaXYWHBBoxCoder(stds=(0.1, 0.1, 0.2, 0.2))
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 30, 15]])
    deltas = torch.randn(2, 12, generator=torch.Generator().manual_seed(1))
    out = coder.decode(boxes, deltas, max_shape=(20, 25))
    assert out.shape == (2, 12)
    for k in range(3):
        single = coder.decode(boxes, deltas[:, 4 * k : 4 * k + 4], (20, 25))
        torch.testing.assert_close(out[:, 4 * k : 4 * k + 4], single)


def test_decode_shapes_and_errors():
    coder = DeltaXYWHBBoxCoder()
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)
    with pytest.raises(ValueError, match="deltas must be"):
        coder.decode(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="must both be"):
        coder.encode(torch.zeros(2, 4), torch.zeros(3, 4))
