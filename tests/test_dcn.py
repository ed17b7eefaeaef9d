"""DeformConv2dPack: the offset layout torchvision reads, zero-offset equivalence, keys, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gcnet.layers import DeformConv2dPack


def _bilinear(img: torch.Tensor, y: float, x: float) -> float:
    """Bilinear sample with zero padding outside the map (the original's rule), by hand."""
    h, w = img.shape
    if y <= -1 or y >= h or x <= -1 or x >= w:
        return 0.0
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    total = 0.0
    for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                total += wy * wx * float(img[yy, xx])
    return total


def _single_tap_layer(tap: tuple[int, int], dy: float, dx: float) -> DeformConv2dPack:
    """1 -> 1 channel 3x3 DCN whose kernel is 1 at ``tap`` and whose offset is a constant (dy, dx)
    on that tap's two channels (set through the offset conv's bias)."""
    layer = DeformConv2dPack(1, 1, 3, padding=1)
    i, j = tap
    k = i * 3 + j
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0, i, j] = 1.0
        layer.conv_offset.bias.zero_()
        layer.conv_offset.bias[2 * k] = dy
        layer.conv_offset.bias[2 * k + 1] = dx
    return layer


def test_offset_layout_dy_dx_row_major_hand_computed() -> None:
    # img[r, c] = 5r + c: bilinear interpolation of a linear map is exact, so the sample is
    # 5*y + x. Tap (0, 2) at output (2, 2), padding 1: y = 2 - 1 + 0 + 0.25, x = 2 - 1 + 2 + 0.5.
    img = torch.arange(25, dtype=torch.float32).view(5, 5)
    layer = _single_tap_layer((0, 2), dy=0.25, dx=0.5)
    out = layer(img.view(1, 1, 5, 5))[0, 0]
    assert out[2, 2].item() == pytest.approx(5 * 1.25 + 3.5)  # 9.75
    # Other layouts give other numbers: (dx, dy) order -> 10.75; column-major taps -> 17.75.
    assert out[2, 2].item() != pytest.approx(5 * 1.5 + 3.25)
    assert out[2, 2].item() != pytest.approx(5 * 3.25 + 1.5)


@pytest.mark.parametrize("tap, dy, dx", [((0, 0), -0.7, 1.3), ((2, 1), 0.6, -1.8), ((1, 2), 1.9, 0.45)])
def test_bilinear_sample_everywhere_including_borders(tap: tuple[int, int], dy: float, dx: float) -> None:
    torch.manual_seed(0)
    img = torch.randn(6, 7)
    layer = _single_tap_layer(tap, dy, dx)
    out = layer(img.view(1, 1, 6, 7))[0, 0]
    i, j = tap
    expected = torch.tensor([[_bilinear(img, r - 1 + i + dy, c - 1 + j + dx) for c in range(7)] for r in range(6)])
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)


def test_stride_and_second_deform_group_layout() -> None:
    """With 2 deform groups the second group's (dy, dx) for tap k sit at channels 18 + 2k, 18 + 2k + 1."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 7)
    layer = DeformConv2dPack(2, 1, 3, stride=2, padding=1, deform_groups=2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 1, 1, 0] = 2.0  # input channel 1 (deform group 1), tap (1, 0) = k 3
        layer.conv_offset.bias[18 + 6] = 0.3
        layer.conv_offset.bias[18 + 7] = -0.6
    out = layer(x)[0, 0]
    assert out.shape == (4, 4)
    expected = torch.tensor(
        [[2.0 * _bilinear(x[0, 1], 2 * r - 1 + 1 + 0.3, 2 * c - 1 + 0 - 0.6) for c in range(4)] for r in range(4)]
    )
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cin, cout, stride, groups, deform_groups",
    [(4, 6, 1, 1, 1), (8, 8, 2, 4, 1), (8, 4, 2, 2, 2)],
)
def test_zero_offsets_equal_plain_conv(cin: int, cout: int, stride: int, groups: int, deform_groups: int) -> None:
    torch.manual_seed(0)
    layer = DeformConv2dPack(cin, cout, 3, stride=stride, padding=1, groups=groups, deform_groups=deform_groups)
    x = torch.randn(2, cin, 9, 8)
    expected = F.conv2d(x, layer.weight, None, stride=stride, padding=1, groups=groups)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_keys_shapes_and_zero_init() -> None:
    """Spec: x101-32x4d layer3 DCN conv2: weight [512, 16, 3, 3], conv_offset [18, 512, 3, 3] + [18]."""
    layer = DeformConv2dPack(512, 512, 3, stride=2, padding=1, groups=32)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {
        "weight": (512, 16, 3, 3),
        "conv_offset.weight": (18, 512, 3, 3),
        "conv_offset.bias": (18,),
    }
    assert torch.count_nonzero(layer.conv_offset.weight) == 0
    assert torch.count_nonzero(layer.conv_offset.bias) == 0
    assert layer.conv_offset.stride == (2, 2) and layer.conv_offset.padding == (1, 1)


def test_bad_group_counts() -> None:
    with pytest.raises(ValueError, match="divisible"):
        DeformConv2dPack(6, 8, groups=4)
    with pytest.raises(ValueError, match="divisible"):
        DeformConv2dPack(6, 6, deform_groups=4)


def test_gradients_reach_offsets() -> None:
    torch.manual_seed(0)
    layer = DeformConv2dPack(3, 4)
    with torch.no_grad():
        layer.conv_offset.bias.uniform_(-0.5, 0.5)
    layer(torch.randn(1, 3, 6, 6)).square().sum().backward()
    assert layer.conv_offset.weight.grad is not None and layer.conv_offset.weight.grad.abs().sum() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


def test_autocast_bf16_and_half_inputs_on_cpu() -> None:
    torch.manual_seed(0)
    layer = DeformConv2dPack(4, 4, groups=2)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.05)
    x = torch.randn(1, 4, 8, 8)
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)
    out_bf16 = layer.to(torch.bfloat16)(x.bfloat16())
    assert out_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(out_bf16.float(), ref, rtol=5e-2, atol=1e-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu_and_autocast() -> None:
    torch.manual_seed(0)
    layer = DeformConv2dPack(8, 8, stride=2, groups=4)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(0, 0.1)
    x = torch.randn(2, 8, 11, 10)
    ref = layer(x)
    layer_cuda = layer.cuda()
    torch.testing.assert_close(layer_cuda(x.cuda()).cpu(), ref, rtol=1e-4, atol=1e-4)
    for dtype in (torch.float16, torch.bfloat16):
        with torch.autocast("cuda", dtype=dtype):
            out = layer_cuda(x.cuda())
        torch.testing.assert_close(out.float().cpu(), ref, rtol=5e-2, atol=5e-2)
