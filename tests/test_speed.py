"""gcnet.speed: inference speed-ups keep outputs; the NCHW hand-over (to_nchw) to RoIAlign and NNPACK; the CPU clock."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gcnet import bench, speed
from gcnet.config import Config
from gcnet.models.roi.extractor import RoIExtractor, nchw_levels
from tiny_models import tiny_config

torch.set_num_threads(1)


def _conv1x1_by_hand(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv is a per-pixel matrix product: out[n, o, h, w] = sum_c W[o, c] x[n, c, h, w] + b[o]."""
    return torch.einsum("oc,nchw->nohw", w[:, :, 0, 0].double(), x.double()) + b.double()[None, :, None, None]


def test_fast_conv_1x1_matches_a_hand_1x1_conv_on_nhwc_maps():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 24, 1)
    assert speed.use_fast_convs(conv) == 1  # modules() includes the root module itself
    conv = conv.to(memory_format=torch.channels_last)
    x = torch.randn(1, 16, 40, 40).contiguous(memory_format=torch.channels_last)  # 25600 > 20480 elements
    with torch.inference_mode():
        assert speed.cpu_conv_kernel(conv, x) == ("onednn" if torch.backends.mkldnn.is_available() else "default")
        out = conv(x)
    torch.testing.assert_close(out.double(), _conv1x1_by_hand(x, conv.weight, conv.bias), atol=1e-5, rtol=1e-5)
    # small inputs, autograd and autocast fall back to nn.Conv2d and give the same numbers
    small = x[:, :, :8, :8]
    assert speed.cpu_conv_kernel(conv, small) == "default"
    torch.testing.assert_close(
        conv(small).double(), _conv1x1_by_hand(small, conv.weight, conv.bias), atol=1e-5, rtol=1e-5
    )
    xg = x.clone().requires_grad_(True)
    assert speed.cpu_conv_kernel(conv, xg) == "default"
    conv(xg).sum().backward()
    torch.testing.assert_close(xg.grad, conv.weight.sum(0)[None].expand_as(x).contiguous(), atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert speed.cpu_conv_kernel(conv, x) == "default"
        assert conv(x).dtype == torch.bfloat16


needs_nnpack = pytest.mark.skipif(not speed.nnpack_ready(), reason="this PyTorch build has no NNPACK")


@needs_nnpack
@pytest.mark.parametrize(
    "shape, kernel",
    [
        ((1, 32, 25, 30), "nnpack"),  # one large map: NNPACK's single-image algorithm
        ((3, 32, 25, 30), "nnpack_per_image"),  # several large maps: the same, image by image
        ((16, 32, 7, 7), "nnpack"),  # many small maps (mask-head RoIs): its batched algorithm
        ((4, 32, 7, 7), "default"),  # a few small maps: a direct conv is faster
    ],
)
def test_fast_conv_3x3_picks_nnpack_where_it_pays_and_matches_a_float64_conv(shape, kernel):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 40, 3, padding=1)
    speed.use_fast_convs(conv)
    x = torch.randn(shape)
    for layout in (torch.contiguous_format, torch.channels_last):  # NNPACK takes NCHW; NHWC is converted
        xl, cl = x.contiguous(memory_format=layout), conv.to(memory_format=layout)
        with torch.inference_mode():
            assert speed.cpu_conv_kernel(cl, xl) == kernel
            out = cl(xl)
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert out.shape == ref.shape
        # Winograd F(6x6, 3x3) trades exactness for ~4x fewer multiplications: float32 rounding only
        err = (out.double() - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, err


@needs_nnpack
def test_fast_conv_falls_back_to_pytorch_when_nnpack_fails(monkeypatch):
    torch.manual_seed(0)
    conv = nn.Conv2d(32, 32, 3, padding=1)
    speed.use_fast_convs(conv)
    x = torch.randn(1, 32, 25, 30)
    calls = []

    def refuse(*args):
        calls.append(1)
        raise RuntimeError("NNPACK SpatialConvolution_updateOutput failed")

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", refuse)
    with torch.inference_mode():
        with pytest.warns(UserWarning, match="NNPACK failed on input"):
            out = conv(x)
        again = conv(x)  # the conv remembers: no second attempt, no second warning
    ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)
    assert len(calls) == 1


def test_fast_conv_3x3_leaves_strided_grouped_dilated_and_thin_convs_to_pytorch():
    x = torch.randn(1, 32, 32, 32)
    cases = [
        nn.Conv2d(32, 32, 3, padding=1, stride=2),
        nn.Conv2d(32, 32, 3, padding=1, groups=4),
        nn.Conv2d(32, 32, 3, padding=2, dilation=2),
        nn.Conv2d(32, 32, 3, padding=0),
        nn.Conv2d(32, 16, 3, padding=1),  # fewer than 32 output channels
        nn.Conv2d(32, 32, 5, padding=2),
    ]
    with torch.inference_mode():
        for conv in cases:
            assert speed.cpu_conv_kernel(conv, x) == "default", conv
    assert speed.use_fast_convs(nn.Sequential(*cases)) == 4  # the kernel is chosen per call, by shape
    with torch.no_grad():
        conv = nn.Conv2d(32, 32, 3, padding=1)
        assert speed.cpu_conv_kernel(conv, torch.zeros(0, 32, 32, 32)) == "default"  # e.g. no RoIs
        assert speed.cpu_conv_kernel(conv.double(), x.double()) == "default"  # fp32 only


def test_use_fast_convs_changes_only_plain_1x1_and_3x3_stride1_convs():
    model = nn.Sequential(
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 1, stride=2),
        nn.ConvTranspose2d(4, 4, 1),
        nn.Conv2d(4, 4, 7, padding=3),
    )
    keys = list(model.state_dict())
    assert speed.use_fast_convs(model) == 2
    assert [type(m) for m in model] == [speed.FastConv2d, speed.FastConv2d, nn.Conv2d, nn.ConvTranspose2d, nn.Conv2d]
    assert list(model.state_dict()) == keys  # checkpoints still load


def test_fold_handles_torchvision_frozen_batchnorm():
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, bias=False), FrozenBatchNorm2d(5))
    norm = block[1]
    norm.weight.uniform_(0.5, 1.5)
    norm.bias.uniform_(-1, 1)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    fused = speed.fuse_conv_bn(block)
    assert isinstance(fused[1], nn.Identity) and isinstance(block[1], FrozenBatchNorm2d)
    # torchvision's FrozenBatchNorm2d uses eps 1e-5: scale g / sqrt(v + eps), shift beta - mean * scale
    s = norm.weight / torch.sqrt(norm.running_var + 1e-5)
    torch.testing.assert_close(fused[0].weight, block[0].weight * s[:, None, None, None])
    torch.testing.assert_close(fused[0].bias, norm.bias - norm.running_mean * s)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x), atol=1e-5, rtol=1e-5)


def test_nchw_levels_converts_channels_last_once_and_keeps_values():
    torch.manual_seed(0)
    a = torch.randn(2, 8, 10, 12)
    b = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last)
    extra = torch.randn(2, 8, 3, 3)
    out = nchw_levels([a, b, extra], 2)
    assert len(out) == 2 and out[0] is a  # already NCHW: no copy; levels past num_levels dropped
    assert out[1].is_contiguous() and torch.equal(out[1], b)
    g = b.clone().requires_grad_(True)  # with autograd: a differentiable copy
    nchw_levels([g], 1)[0].sum().backward()
    assert torch.equal(g.grad, torch.ones_like(b))


def test_roi_extractor_gives_the_same_features_from_nhwc_maps():
    torch.manual_seed(0)
    feats = [torch.randn(1, 4, 32 // s, 48 // s) for s in (1, 2, 4, 8)]
    rois = torch.tensor([[0, 1.0, 2.0, 20.0, 25.0], [0, 0.0, 0.0, 47.0, 31.0], [0, 5.0, 5.0, 9.0, 7.0]])
    ext = RoIExtractor((4, 8, 16, 32), output_size=3, finest_scale=4.0)
    ref = ext(feats, rois)
    cl = [f.contiguous(memory_format=torch.channels_last) for f in feats]
    torch.testing.assert_close(ext(nchw_levels(cl, 4), rois), ref, atol=0, rtol=0)


def test_cpu_time_counts_work_not_sleep():
    t0 = speed.cpu_time_s()
    time.sleep(0.2)
    slept = speed.cpu_time_s() - t0
    t1, w1 = speed.cpu_time_s(), time.perf_counter()
    x = torch.randn(128, 128)
    while speed.cpu_time_s() - t1 < 0.1:  # busy until the clock has advanced (shared machines run slower)
        x = (x @ x).tanh()
        assert time.perf_counter() - w1 < 20, "cpu_time_s did not advance during busy work"
    assert slept < 0.05


def test_compile_detector_rejects_bad_arguments():
    with pytest.raises(ValueError, match="scope"):
        speed.compile_detector(nn.Linear(2, 2), "everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="freeze"):
        speed.compile_detector(nn.Linear(2, 2), "full", backend="eager", freeze=True)
    with pytest.raises(TypeError, match="TwoStageDetector"):
        speed.compile_detector(nn.Linear(2, 2), "static")


def test_bench_reexports_the_moved_names():
    for name in ("compile_detector", "fuse_conv_bn", "prepare_for_inference", "autocast_context", "sync"):
        assert getattr(bench, name) is getattr(speed, name)


def _tiny_config(cascade: bool = False) -> Config:
    return tiny_config(cascade, scale=(160, 128), score_thr=-1.0)


@pytest.mark.parametrize("cascade", [False, True])
def test_prepare_for_inference_keeps_detections_of_a_tiny_detector(monkeypatch, cascade):
    from gcnet.models.detector import TwoStageDetector

    winograd_calls = []
    nnpack_conv = torch._nnpack_spatial_convolution
    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", lambda *a: winograd_calls.append(1) or nnpack_conv(*a))

    cfg = _tiny_config(cascade)
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.model, cfg.class_names).eval()
    for m in model.modules():  # trained-looking statistics and a GC block that is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2)
            m.running_mean.uniform_(-0.5, 0.5)
        if m.__class__.__name__ == "ContextBlock" and m.channel_add_conv is not None:
            nn.init.normal_(m.channel_add_conv[3].weight, std=0.1)
    images, metas = bench.synthetic_input((128, 160), cfg.data)
    fast = speed.prepare_for_inference(model)
    assert any(isinstance(m, speed.FastConv2d) for m in fast.modules())
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())  # original untouched
    with torch.inference_mode():
        ref, out = model(images, metas)[0], fast(images, metas)[0]
    assert len(ref) == 10  # score_thr -1 keeps the full budget, so the comparison is not vacuous
    # the 32x40 P2 / layer1 maps are large enough for the Winograd kernel (FPN, RPN and 3x3 backbone convs)
    assert len(winograd_calls) >= 5 or not speed.nnpack_ready()
    assert torch.equal(ref.labels, out.labels)
    torch.testing.assert_close(out.boxes, ref.boxes, atol=1e-3, rtol=0)
    torch.testing.assert_close(out.scores, ref.scores, atol=1e-4, rtol=0)
    assert (out.masks.full() != ref.masks.full()).float().mean() < 1e-3  # threshold flips only where p ~ 0.5


@pytest.mark.slow
def test_frozen_inductor_compile_keeps_outputs():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    block[1].running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 16, 16)
    compiled = speed.compile_detector(block, "full", freeze=True)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), block(x), atol=1e-5, rtol=1e-5)
