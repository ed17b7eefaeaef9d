"""FLOPs and parameters: the count against independent numbers (torchvision's published ResNet
GFLOPs, hand formulas for the GC block and the RoI heads), the shape-only count against a real run,
and the cached zoo table and the README against a fresh count."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode

from gcnet.cli import main
from gcnet.flops import _counter, count_flops, format_count, gc_overhead, plain_twin, zoo_columns
from gcnet.layers import DeformConv2dPack
from gcnet.models.backbone import ResNet
from gcnet.zoo import ZOO
from gcnet.zoo_flops import ZOO_FLOPS
from tiny_models import tiny_config

README = Path(__file__).resolve().parents[1] / "README.md"
R50_GC16 = "mask-rcnn_r50-gcb-r16-c3-c5_fpn_1x_coco"


def _fake_count(module_factory, *shape):
    with FakeTensorMode(), torch.no_grad():
        module = module_factory().eval()
        with _counter() as counter:
            module(torch.zeros(*shape))
    return counter.get_total_flops()


@pytest.mark.parametrize(
    ("name", "weights"),
    [
        ("mask-rcnn_r50-syncbn_fpn_1x_coco", torchvision.models.ResNet50_Weights.IMAGENET1K_V1),
        ("mask-rcnn_r101-syncbn_fpn_1x_coco", torchvision.models.ResNet101_Weights.IMAGENET1K_V1),
    ],
)
def test_backbone_matches_torchvision_published_gflops(name, weights):
    """torchvision publishes each classifier's multiply-adds at 224x224 (meta "_ops", GMACs): our
    backbone plus the classifier's fc layer must give the same number."""
    cfg = dataclasses.replace(ZOO[name].config.model.backbone, pretrained=None)
    flops = _fake_count(lambda: ResNet(cfg), 1, 3, 224, 224)
    assert round((flops / 2 + 2048 * 1000) / 1e9, 3) == weights.meta["_ops"]


def test_gc_overhead_equals_the_hand_formula():
    """Each GC block (C channels, ratio r, P = C*r, an H x W map) adds conv_mask and the attention
    product (C*H*W multiply-adds each) and two 1x1 convs on the pooled vector (C*P each); parameters
    2CP + 2C + 3P + 1 (two convs with bias, conv_mask with bias, LayerNorm's weight and bias)."""
    row = ZOO_FLOPS[R50_GC16]
    flops = params = 0
    for blocks, channels, (h, w) in ((4, 512, (100, 168)), (6, 1024, (50, 84)), (3, 2048, (25, 42))):
        planes = int(channels / 16)
        flops += blocks * 2 * (2 * channels * h * w + 2 * channels * planes)
        params += blocks * (2 * channels * planes + 2 * channels + 3 * planes + 1)
    assert row["gc_flops"] == flops and row["gc_params"] == params
    assert row["gc_flops_share"] < 0.01  # the paper's claim: well under 1% of the FLOPs
    assert all(r["gc_flops_share"] is None or r["gc_flops_share"] < 0.001 for r in ZOO_FLOPS.values())


def test_roi_heads_counted_at_the_forced_roi_numbers():
    """Box head: fc6 on 256x7x7, fc7, classifier (81) and regressor (80x4, or 4 class-agnostic)
    on 1000 RoIs; mask head: four 3x3 convs on 14x14, the 2x2 deconv, the 80-class logits on 28x28,
    on 100 RoIs; the cascade has three of each."""

    def box(reg: int) -> int:
        return 2 * 1000 * (256 * 49 * 1024 + 1024 * 1024 + 1024 * 81 + 1024 * reg)

    mask = 2 * 100 * (4 * 196 * 256 * 256 * 9 + 196 * 256 * 256 * 4 + 784 * 256 * 80)
    r50 = ZOO_FLOPS[R50_GC16]["flops"]
    assert r50["roi_bbox"] == box(320) and r50["roi_mask"] == mask
    cascade = ZOO_FLOPS["cascade-mask-rcnn_x101-32x4d-syncbn_fpn_1x_coco"]["flops"]
    assert cascade["roi_bbox"] == 3 * box(4) and cascade["roi_mask"] == 3 * mask


def test_deformable_conv_counts_as_its_convolution_plus_offsets():
    def dcn() -> DeformConv2dPack:
        return DeformConv2dPack(64, 64, 3, stride=2, groups=4)

    ours = _fake_count(dcn, 1, 64, 40, 48)
    conv = _fake_count(lambda: torch.nn.Conv2d(64, 64, 3, 2, 1, groups=4, bias=False), 1, 64, 40, 48)
    offsets = _fake_count(lambda: torch.nn.Conv2d(64, 18, 3, 2, 1), 1, 64, 40, 48)
    assert ours == conv + offsets > 0


def test_shape_only_count_equals_a_real_run():
    """FakeTensorMode changes nothing counted: the tiny detector's parts run on real zeros count the same."""
    cfg = tiny_config()
    fake = count_flops(cfg, image_size=(96, 64))
    from gcnet.models.detector import TwoStageDetector

    model = TwoStageDetector(cfg.model, cfg.class_names).eval()
    roi = cfg.model.roi
    with torch.no_grad(), _counter() as counter:
        feats = model.neck(model.backbone(torch.zeros(1, 3, 64, 96)))
        model.rpn_head(feats)
        model.roi_head.bbox_head(torch.zeros(cfg.model.rpn.test_max_per_img, roi.in_channels, 7, 7))
        model.roi_head.mask_head(torch.zeros(roi.max_per_img, roi.in_channels, 14, 14))
    assert fake.flops == counter.get_total_flops()
    assert fake.params == sum(p.numel() for p in model.parameters())
    assert fake.input_hw == (64, 96)


def test_cached_zoo_table_equals_a_fresh_count():
    assert list(ZOO_FLOPS) == list(ZOO)
    cfg = ZOO[R50_GC16].config
    count = count_flops(cfg)
    row = ZOO_FLOPS[R50_GC16]
    assert row["params"] == count.params and row["flops"] == {p.name: p.flops for p in count.parts}
    overhead = gc_overhead(count, count_flops(plain_twin(cfg)))
    assert (row["gc_flops"], row["gc_params"]) == (overhead.flops, overhead.params)
    assert row["gc_flops_share"] == pytest.approx(overhead.flops_share, abs=1e-6)
    assert "GC blocks: +0.27 GFLOPs (0.05% of the plain twin's total" in format_count(count, overhead)


def test_readme_zoo_table_has_the_counted_columns():
    text = README.read_text(encoding="utf-8")
    for name, row in ZOO_FLOPS.items():
        cells = zoo_columns(row["params"], sum(row["flops"].values()), row["gc_flops_share"])
        tail = r" \| ".join(re.escape(c) for c in cells)
        pattern = rf"^\| {re.escape(name)} \|.*\| {tail} \|$"
        assert re.search(pattern, text, re.MULTILINE), name


def test_cli_flops_and_zoo_columns(capsys):
    assert main(["flops", "gcnet-demo"]) == 0
    out = capsys.readouterr().out
    assert "backbone" in out and "roi_mask" in out and "GC blocks: +" in out and "input 160x160" in out
    assert main(["flops", "gcnet-demo", "--size", "640", "480", "--set", "model.roi.max_per_img=10"]) == 0
    out = capsys.readouterr().out
    assert "640x480" in out and "mask head(s) on 10" in out
    assert main(["flops", "gcnet-demo", "--size", "0", "480"]) == 2
    assert "image size must be positive" in capsys.readouterr().err
    assert main(["zoo", "--flops"]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs" in out
    line = next(line for line in out.splitlines() if line.startswith(R50_GC16))
    assert line.split()[-3:] == list(
        zoo_columns(
            ZOO_FLOPS[R50_GC16]["params"],
            sum(ZOO_FLOPS[R50_GC16]["flops"].values()),
            ZOO_FLOPS[R50_GC16]["gc_flops_share"],
        )
    )
