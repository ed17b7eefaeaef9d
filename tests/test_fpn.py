"""FPN against an independent computation (explicit nearest-neighbour indices), odd sizes, keys, init."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gcnet.config import FPNConfig
from gcnet.models.neck import FPN

SMALL = FPNConfig(in_channels=(4, 6, 8, 10), out_channels=5, num_outs=5)


def _nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest upsampling by index: output row r reads input row floor(r * H_in / H_out)."""
    h_in, w_in = x.shape[-2:]
    rows = [min(math.floor(r * h_in / size[0]), h_in - 1) for r in range(size[0])]
    cols = [min(math.floor(c * w_in / size[1]), w_in - 1) for c in range(size[1])]
    return x[..., rows, :][..., :, cols]


def _reference(fpn: FPN, feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """Spec 4.1 in float64: 1x1 laterals (einsum), top-down add, 3x3 outputs, P6 = every 2nd pixel of P5."""
    lats = []
    for unit, f in zip(fpn.lateral_convs, feats):
        w = unit.conv.weight.double()[:, :, 0, 0]
        lats.append(torch.einsum("oc,nchw->nohw", w, f.double()) + unit.conv.bias.double().view(1, -1, 1, 1))
    for i in range(len(lats) - 1, 0, -1):
        lats[i - 1] = lats[i - 1] + _nearest(lats[i], tuple(lats[i - 1].shape[-2:]))
    outs = [
        F.conv2d(lat, unit.conv.weight.double(), unit.conv.bias.double(), padding=1)
        for unit, lat in zip(fpn.fpn_convs, lats)
    ]
    outs.append(outs[-1][..., ::2, ::2])  # kernel-1 max-pool with stride 2 = subsampling, ceil(H/2)
    return outs


@pytest.mark.parametrize(
    "sizes",
    [
        [(16, 24), (8, 12), (4, 6), (2, 3)],  # even: exact doubling
        [(13, 17), (7, 9), (4, 5), (2, 3)],  # odd: upsampling must hit the lower level's size
        [(25, 38), (13, 19), (7, 10), (4, 5)],  # 800x1216-like rounding pattern
    ],
)
def test_matches_independent_computation(sizes: list[tuple[int, int]]) -> None:
    torch.manual_seed(0)
    fpn = FPN(SMALL)
    with torch.no_grad():
        for p in fpn.parameters():
            p.normal_(0, 0.3)
    feats = [torch.randn(2, c, h, w) for c, (h, w) in zip(SMALL.in_channels, sizes)]
    outs = fpn(feats)
    ref = _reference(fpn, feats)
    assert len(outs) == 5
    expected_shapes = [(2, 5, h, w) for h, w in sizes] + [(2, 5, (sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2)]
    assert [tuple(o.shape) for o in outs] == expected_shapes
    for a, b in zip(outs, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5)


def test_nearest_helper_is_not_trivial() -> None:
    """The reference's index rule on an odd size picks rows 0,0,1,1,2,2,3 for 4 -> 7."""
    x = torch.arange(4.0).view(1, 1, 4, 1)
    assert _nearest(x, (7, 1)).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_keys_shapes_and_init() -> None:
    fpn = FPN(FPNConfig())
    shapes = {k: tuple(v.shape) for k, v in fpn.state_dict().items()}
    expected = {}
    for i, c in enumerate((256, 512, 1024, 2048)):
        expected[f"lateral_convs.{i}.conv.weight"] = (256, c, 1, 1)
        expected[f"lateral_convs.{i}.conv.bias"] = (256,)
        expected[f"fpn_convs.{i}.conv.weight"] = (256, 256, 3, 3)
        expected[f"fpn_convs.{i}.conv.bias"] = (256,)
    assert shapes == expected
    for unit in list(fpn.lateral_convs) + list(fpn.fpn_convs):
        w = unit.conv.weight
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        bound = math.sqrt(6.0 / (fan_in + fan_out))  # Xavier uniform, gain 1
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert torch.count_nonzero(unit.conv.bias) == 0


def test_more_extra_levels() -> None:
    fpn = FPN(FPNConfig(in_channels=(4, 8), out_channels=3, num_outs=4))
    outs = fpn([torch.randn(1, 4, 9, 9), torch.randn(1, 8, 5, 5)])
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 9), (5, 5), (3, 3), (2, 2)]
    torch.testing.assert_close(outs[3], outs[2][..., ::2, ::2])


def test_bad_inputs() -> None:
    fpn = FPN(SMALL)
    with pytest.raises(ValueError, match="expects 4"):
        fpn([torch.randn(1, 4, 8, 8)])
    with pytest.raises(ValueError, match="input 1"):
        fpn([torch.randn(1, 4, 8, 8), torch.randn(1, 7, 4, 4), torch.randn(1, 8, 2, 2), torch.randn(1, 10, 1, 1)])
    with pytest.raises(ValueError, match="num_outs"):
        FPN(FPNConfig(num_outs=3))


def test_autocast_bf16_cpu() -> None:
    torch.manual_seed(0)
    fpn = FPN(SMALL)
    feats = [torch.randn(1, c, s, s) for c, s in zip(SMALL.in_channels, (15, 8, 4, 2))]
    ref = fpn(feats)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fpn(feats)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.float(), b, rtol=5e-2, atol=5e-2)
