"""ResNet / ResNeXt backbone: keys against the spec, shapes, GC placement, DCN, freezing, torchvision."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torchvision

from gcnet.config import BackboneConfig
from gcnet.layers import ContextBlock, DeformConv2dPack, FrozenBatchNorm2d
from gcnet.models.backbone import ResNet

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
ALL_STAGES = (False, True, True, True)
X101 = BackboneConfig(depth=101, groups=32, base_width=4, pretrained=None)


def _spec_keys(
    blocks: tuple[int, ...], width: tuple[int, ...], groups: int, gc_planes: tuple[int, ...] | None, dcn: bool
) -> dict[str, tuple[int, ...]]:
    """Expected backbone state_dict, written from spec sections 2.2, 3 and 8.2 (shapes included)."""
    keys: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}
    keys.update({f"bn1.{b}": (64,) if b != "num_batches_tracked" else () for b in BN})
    inplanes = 64
    for s, (n, w) in enumerate(zip(blocks, width)):
        out = 256 * 2**s
        for j in range(n):
            p = f"layer{s + 1}.{j}."
            cin = inplanes if j == 0 else out
            keys[p + "conv1.weight"] = (w, cin, 1, 1)
            keys[p + "conv2.weight"] = (w, w // groups, 3, 3)
            keys[p + "conv3.weight"] = (out, w, 1, 1)
            for bn, c in (("bn1", w), ("bn2", w), ("bn3", out)):
                keys.update({f"{p}{bn}.{b}": (c,) if b != "num_batches_tracked" else () for b in BN})
            if j == 0:
                keys[p + "downsample.0.weight"] = (out, cin, 1, 1)
                keys.update({f"{p}downsample.1.{b}": (out,) if b != "num_batches_tracked" else () for b in BN})
            if s > 0 and dcn:
                keys[p + "conv2.conv_offset.weight"] = (18, w, 3, 3)
                keys[p + "conv2.conv_offset.bias"] = (18,)
            if s > 0 and gc_planes is not None:
                q, g = p + "context_block.", gc_planes[s - 1]
                keys.update(
                    {
                        q + "conv_mask.weight": (1, out, 1, 1),
                        q + "conv_mask.bias": (1,),
                        q + "channel_add_conv.0.weight": (g, out, 1, 1),
                        q + "channel_add_conv.0.bias": (g,),
                        q + "channel_add_conv.1.weight": (g, 1, 1),
                        q + "channel_add_conv.1.bias": (g, 1, 1),
                        q + "channel_add_conv.3.weight": (out, g, 1, 1),
                        q + "channel_add_conv.3.bias": (out,),
                    }
                )
        inplanes = out
    return keys


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _meta_shapes(cfg: BackboneConfig) -> dict[str, tuple[int, ...]]:
    """Build on the meta device: same modules and keys, no memory or init cost."""
    with torch.device("meta"):
        return _shapes(ResNet(cfg))


R50_WIDTHS = (64, 128, 256, 512)
X101_WIDTHS = (128, 256, 512, 1024)


@pytest.mark.parametrize(
    "cfg, expected, count",
    [
        (BackboneConfig(), _spec_keys((3, 4, 6, 3), R50_WIDTHS, 1, None, False), 318),
        (BackboneConfig(gc_ratio=1 / 16), _spec_keys((3, 4, 6, 3), R50_WIDTHS, 1, (32, 64, 128), False), 422),
        (X101, _spec_keys((3, 4, 23, 3), X101_WIDTHS, 32, None, False), 624),
        (replace(X101, gc_ratio=1 / 4), _spec_keys((3, 4, 23, 3), X101_WIDTHS, 32, (128, 256, 512), False), 864),
        (replace(X101, dcn_stages=ALL_STAGES), _spec_keys((3, 4, 23, 3), X101_WIDTHS, 32, None, True), 684),
        (
            replace(X101, dcn_stages=ALL_STAGES, gc_ratio=1 / 16),
            _spec_keys((3, 4, 23, 3), X101_WIDTHS, 32, (32, 64, 128), True),
            924,
        ),
    ],
    ids=["r50", "r50-gc", "x101", "x101-gc", "x101-dcn", "x101-dcn-gc"],
)
def test_state_dict_matches_spec(cfg: BackboneConfig, expected: dict, count: int) -> None:
    assert len(expected) == count  # the spec's own count (section 8.2) agrees with its key rules
    got = _meta_shapes(cfg)
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected


def test_spec_example_blocks() -> None:
    """Spec 2.2 examples, literally: R-50 layer2.0 GC r16 and X-101 layer3.0 DCN + GC."""
    r50 = _meta_shapes(BackboneConfig(gc_ratio=1 / 16))
    assert r50["layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert r50["layer2.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert r50["layer2.0.context_block.channel_add_conv.0.weight"] == (32, 512, 1, 1)
    x101 = _meta_shapes(replace(X101, dcn_stages=ALL_STAGES, gc_ratio=1 / 4))
    assert x101["layer3.0.conv1.weight"] == (512, 512, 1, 1)
    assert x101["layer3.0.conv2.weight"] == (512, 16, 3, 3)
    assert x101["layer3.0.conv2.conv_offset.weight"] == (18, 512, 3, 3)
    assert x101["layer3.0.context_block.channel_add_conv.3.weight"] == (1024, 256, 1, 1)


@pytest.mark.parametrize(
    "depth, channels", [(18, [64, 128, 256, 512]), (34, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])]
)
def test_output_shapes_and_strides(depth: int, channels: list[int]) -> None:
    model = ResNet(BackboneConfig(depth=depth, pretrained=None)).eval()
    assert model.out_channels == channels
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 32))
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // s, 32 // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_out_indices_subset() -> None:
    sub = ResNet(BackboneConfig(depth=18, out_indices=(1, 3))).eval()
    assert sub.out_channels == [128, 512]
    with torch.no_grad():
        outs = sub(torch.randn(1, 3, 33, 47))
    assert [tuple(o.shape) for o in outs] == [(1, 128, 5, 6), (1, 512, 2, 2)]


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _torchvision_features(net: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    outs = []
    for name in ("layer1", "layer2", "layer3", "layer4"):
        x = getattr(net, name)(x)
        outs.append(x)
    return outs


@pytest.mark.parametrize(
    "factory, cfg",
    [
        (torchvision.models.resnet50, BackboneConfig()),
        (torchvision.models.resnext50_32x4d, BackboneConfig(groups=32, base_width=4)),
        (torchvision.models.resnet18, BackboneConfig(depth=18)),
    ],
    ids=["resnet50", "resnext50_32x4d", "resnet18"],
)
def test_equals_torchvision(factory, cfg: BackboneConfig) -> None:
    torch.manual_seed(0)
    ref = factory(weights=None)
    _randomise_bn(ref)
    ref.eval()
    ours = ResNet(cfg).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(ours(x), _torchvision_features(ref, x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gc_block_sits_after_bn3_before_residual_add() -> None:
    torch.manual_seed(0)
    model = ResNet(BackboneConfig(gc_ratio=1 / 4, out_indices=(1,))).eval()
    block = model.layer2[0]
    assert isinstance(block.context_block, ContextBlock) and model.layer1[0].context_block is None
    with torch.no_grad():
        for p in block.context_block.parameters():
            p.normal_(0, 0.2)
    x = torch.randn(2, 256, 9, 7)
    with torch.no_grad():
        out = torch.relu(block.bn1(block.conv1(x)))
        out = torch.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
        # clone(): under no_grad the backbone's GC block fuses in place into its input
        expected = torch.relu(block.context_block(out.clone()) + block.downsample(x))
        wrong = torch.relu(block.context_block(out.clone() + block.downsample(x)))
        got = block(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, wrong, atol=1e-3)


def test_dcn_blocks_and_zero_offsets_equal_plain_model() -> None:
    torch.manual_seed(0)
    cfg = BackboneConfig(groups=32, base_width=4)
    plain = ResNet(cfg).eval()
    _randomise_bn(plain)
    dcn = ResNet(replace(cfg, dcn_stages=ALL_STAGES)).eval()
    assert not isinstance(dcn.layer1[0].conv2, DeformConv2dPack)
    assert all(isinstance(b.conv2, DeformConv2dPack) for s in (2, 3, 4) for b in getattr(dcn, f"layer{s}"))
    assert dcn.layer2[0].conv2.stride == (2, 2) and dcn.layer3[0].conv2.groups == 32
    result = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == [] and all("conv_offset" in k for k in result.missing_keys)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        for a, b in zip(dcn(x), plain(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_frozen_stages_get_no_grad_and_stay_eval() -> None:
    model = ResNet(BackboneConfig(frozen_stages=1, norm_eval=False, depth=18))
    model.train()
    frozen = [model.conv1, model.bn1, model.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert model.layer2.training and model.layer2[0].bn1.training
    model(torch.randn(2, 3, 32, 32))[-1].sum().backward()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(p.grad is not None for p in model.layer2.parameters())
    model.eval().train()  # every train() call re-applies it
    assert not model.layer1.training and not model.bn1.training
    none = ResNet(BackboneConfig(frozen_stages=-1, depth=18)).train()
    assert all(p.requires_grad for p in none.parameters())


def test_norm_eval_keeps_running_stats() -> None:
    torch.manual_seed(0)
    model = ResNet(BackboneConfig(depth=18, norm_eval=True)).train()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model(torch.randn(2, 3, 32, 32) * 3 + 1)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m.training for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model.layer2[0].bn1.weight.requires_grad  # affine params of stages 2-4 still train

    train_bn = ResNet(BackboneConfig(depth=18, norm_eval=False)).train()
    before = {k: v.clone() for k, v in train_bn.state_dict().items() if "running_mean" in k}
    train_bn(torch.randn(2, 3, 32, 32) * 3 + 1)
    after = train_bn.state_dict()
    assert not torch.equal(before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"])
    assert torch.equal(before["layer1.0.bn1.running_mean"], after["layer1.0.bn1.running_mean"])  # frozen


def test_frozen_bn_has_same_keys_and_eval_outputs() -> None:
    torch.manual_seed(0)
    bn = ResNet(BackboneConfig(depth=18)).eval()
    _randomise_bn(bn)
    frozen = ResNet(BackboneConfig(depth=18, norm="frozen_bn")).eval()
    assert _shapes(frozen) == _shapes(bn)
    frozen.load_state_dict(bn.state_dict(), strict=True)
    assert sum(p.numel() for p in frozen.parameters() if p.requires_grad) < sum(p.numel() for p in bn.parameters())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        for a, b in zip(frozen(x), bn(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(depth=42), "depth"),
        (dict(depth=18, groups=32, base_width=4), "BasicBlock"),
        (dict(out_indices=(4,)), "out_indices"),
        (dict(out_indices=(2, 1)), "out_indices"),
        (dict(frozen_stages=5), "frozen_stages"),
        (dict(norm="gn"), "norm"),
    ],
)
def test_bad_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ResNet(BackboneConfig(**kwargs))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="N, 3, H, W"):
        ResNet(BackboneConfig(depth=18))(torch.randn(1, 1, 32, 32))


def test_autocast_bf16_cpu_with_gc_and_dcn() -> None:
    torch.manual_seed(0)
    cfg = BackboneConfig(depth=18, gc_ratio=1 / 4, dcn_stages=ALL_STAGES, frozen_stages=-1)
    model = ResNet(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    for a, b in zip(out, ref):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().max() < 0.05 * b.abs().max() + 0.05


def test_from_scratch_init_is_the_originals() -> None:
    """pretrained=None: Kaiming-normal fan_out convs (GC and offset convs too), zero biases, norms at
    1/0, DCN offsets zero, and the last norm of each block zero, so each block starts as relu(identity)."""
    torch.manual_seed(0)
    cfg = BackboneConfig(
        depth=50, base_channels=16, gc_ratio=1 / 4, dcn_stages=(False, False, True, True), pretrained=None
    )
    model = ResNet(cfg).eval()
    w = model.layer3[1].conv3.weight  # [256, 64, 1, 1]: fan_out = 256
    assert abs(w.std().item() / (2.0 / 256) ** 0.5 - 1) < 0.05
    w = model.conv1.weight  # [16, 3, 7, 7]: fan_out = 16 * 49
    assert abs(w.std().item() / (2.0 / (16 * 49)) ** 0.5 - 1) < 0.1
    gc = model.layer2[0].context_block
    last = gc.channel_add_conv[3]
    assert last.weight.abs().sum() > 0 and torch.count_nonzero(last.bias) == 0  # Kaiming, not the GC zero-init
    assert torch.count_nonzero(gc.conv_mask.bias) == 0
    offset = model.layer3[0].conv2.conv_offset
    assert isinstance(model.layer3[0].conv2, DeformConv2dPack)
    assert torch.count_nonzero(offset.weight) == 0 and torch.count_nonzero(offset.bias) == 0
    for block in [*model.layer1, *model.layer2, *model.layer3, *model.layer4]:
        assert torch.count_nonzero(block.bn3.weight) == 0 and torch.count_nonzero(block.bn3.bias) == 0
        assert torch.equal(block.bn1.weight, torch.ones_like(block.bn1.weight))
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.layer1[1](x), torch.relu(x))  # a block without downsample: relu(identity)

    basic = ResNet(BackboneConfig(depth=18, pretrained=None))
    assert torch.count_nonzero(basic.layer2[1].bn2.weight) == 0
    keep = ResNet(replace(cfg, zero_init_residual=False))
    assert torch.equal(keep.layer1[0].bn3.weight, torch.ones_like(keep.layer1[0].bn3.weight))
    plain = ResNet(replace(cfg, scratch_init="pytorch"))  # PyTorch's layer init, GC's own zero init
    assert torch.count_nonzero(plain.layer2[0].context_block.channel_add_conv[3].weight) == 0
    assert torch.equal(plain.layer1[0].bn3.weight, torch.ones_like(plain.layer1[0].bn3.weight))
    with pytest.raises(ValueError, match="scratch_init"):
        ResNet(replace(cfg, scratch_init="xavier"))
    # with ImageNet weights to come, the GC and DCN blocks keep their own construction init
    pre = ResNet(replace(cfg, pretrained="torchvision://resnet50"))
    assert torch.count_nonzero(pre.layer2[0].context_block.channel_add_conv[3].weight) == 0
    assert torch.equal(pre.layer1[0].bn3.weight, torch.ones_like(pre.layer1[0].bn3.weight))
