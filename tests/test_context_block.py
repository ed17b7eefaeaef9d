"""ContextBlock against an independent float64 formulation of the GCNet equation."""

from __future__ import annotations

import math

import pytest
import torch

from gcnet.layers import ContextBlock


def _randomise(block: ContextBlock, seed: int = 0) -> None:
    """Non-zero values everywhere (init makes the block an identity, which tests nothing)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


@torch.no_grad()
def _reference(block: ContextBlock, x: torch.Tensor) -> torch.Tensor:
    """z_i = x_i * sigmoid(T_mul(c)) + T_add(c), c = sum_j softmax_j(w_k . x_j + b) x_j (or the mean).

    Written with explicit sums over positions in float64, sharing no code with the module.
    """
    x = x.double()
    n, c, h, w = x.shape

    flat = x.reshape(n, c, h * w)
    if block.pooling_type == "att":
        wk = block.conv_mask.weight.double().reshape(c)
        bk = block.conv_mask.bias.double()[0]
        ctx = torch.zeros(n, c, dtype=torch.float64)
        for b in range(n):
            logits = [float((wk * flat[b, :, p]).sum() + bk) for p in range(h * w)]
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            total = sum(exps)
            for p in range(h * w):
                ctx[b] += exps[p] / total * flat[b, :, p]
    else:
        ctx = flat.sum(dim=2) / (h * w)

    def transform(seq: torch.nn.Sequential) -> torch.Tensor:
        w0 = seq[0].weight.double().reshape(seq[0].out_channels, c)
        t = torch.einsum("pc,nc->np", w0, ctx) + seq[0].bias.double()
        mean = t.mean(dim=1, keepdim=True)
        var = ((t - mean) ** 2).mean(dim=1, keepdim=True)
        t = (t - mean) / torch.sqrt(var + 1e-5)
        t = t * seq[1].weight.double().reshape(-1) + seq[1].bias.double().reshape(-1)
        t = torch.clamp(t, min=0)
        w3 = seq[3].weight.double().reshape(c, -1)
        return torch.einsum("cp,np->nc", w3, t) + seq[3].bias.double()

    out = x.clone()
    if block.channel_mul_conv is not None:
        out = out * torch.sigmoid(transform(block.channel_mul_conv)).reshape(n, c, 1, 1)
    if block.channel_add_conv is not None:
        out = out + transform(block.channel_add_conv).reshape(n, c, 1, 1)
    return out


@pytest.mark.parametrize("pooling", ["att", "avg"])
@pytest.mark.parametrize(
    "fusions", [("channel_add",), ("channel_mul",), ("channel_mul", "channel_add"), ("channel_add", "channel_mul")]
)
def test_matches_independent_formulation(pooling: str, fusions: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    block = ContextBlock(8, 0.5, pooling, fusions)
    _randomise(block)
    x = torch.randn(2, 8, 5, 7)
    out = block(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out.double(), _reference(block, x), rtol=1e-5, atol=1e-5)


def test_odd_sizes_batch_and_channels_last() -> None:
    torch.manual_seed(1)
    block = ContextBlock(16, 1 / 4, "att", ("channel_mul", "channel_add"))
    _randomise(block, seed=3)
    for shape in [(1, 16, 1, 1), (3, 16, 3, 11), (2, 16, 9, 4)]:
        x = torch.randn(shape)
        ref = _reference(block, x)
        torch.testing.assert_close(block(x).double(), ref, rtol=1e-5, atol=1e-5)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(block(x_cl).double(), ref, rtol=1e-5, atol=1e-5)


def test_identity_at_init_and_init_rules() -> None:
    torch.manual_seed(0)
    block = ContextBlock(512, 1 / 4, "att", ("channel_add", "channel_mul"))
    x = torch.randn(2, 512, 4, 5)
    # add term is exactly 0 and mul gate is sigmoid(0) = 0.5 at init.
    add_only = ContextBlock(512, 1 / 4)
    assert torch.equal(add_only(x), x)
    torch.testing.assert_close(block(x), x * 0.5)
    for seq in (block.channel_add_conv, block.channel_mul_conv):
        assert torch.count_nonzero(seq[3].weight) == 0 and torch.count_nonzero(seq[3].bias) == 0
        assert torch.count_nonzero(seq[0].weight) > 0  # first conv keeps PyTorch's default init
    assert torch.count_nonzero(block.conv_mask.bias) == 0
    # Kaiming normal, fan_in = 512, ReLU gain: std = sqrt(2 / 512) = 0.0625 (512 samples: +-15%).
    std = float(block.conv_mask.weight.detach().std())
    assert 0.0625 * 0.85 < std < 0.0625 * 1.15


def test_keys_and_shapes_match_original() -> None:
    """Spec section 2: layer2 GC r4 block, C = 512, planes = 128."""
    block = ContextBlock(512, 1 / 4)
    shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
    assert shapes == {
        "conv_mask.weight": (1, 512, 1, 1),
        "conv_mask.bias": (1,),
        "channel_add_conv.0.weight": (128, 512, 1, 1),
        "channel_add_conv.0.bias": (128,),
        "channel_add_conv.1.weight": (128, 1, 1),
        "channel_add_conv.1.bias": (128, 1, 1),
        "channel_add_conv.3.weight": (512, 128, 1, 1),
        "channel_add_conv.3.bias": (512,),
    }
    assert ContextBlock(1024, 1 / 16).planes == 64
    avg_mul = ContextBlock(64, 1 / 16, "avg", ("channel_mul",))
    assert sorted(avg_mul.state_dict()) == [f"channel_mul_conv.{i}.{p}" for i in (0, 1, 3) for p in ("bias", "weight")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pooling_type="max"), "pooling_type"),
        (dict(fusion_types=()), "empty"),
        (dict(fusion_types=("channel_concat",)), "unknown fusion"),
        (dict(fusion_types="channel_add"), "sequence"),
        (dict(ratio=1 / 64), "planes"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    args = dict(in_channels=32, ratio=0.25) | kwargs
    with pytest.raises(ValueError, match=match):
        ContextBlock(**args)


def test_wrong_input_channels() -> None:
    with pytest.raises(ValueError, match="expects"):
        ContextBlock(8, 0.5)(torch.randn(1, 4, 3, 3))


def test_autocast_bf16_cpu_close_to_fp32() -> None:
    torch.manual_seed(0)
    block = ContextBlock(32, 1 / 4, "att", ("channel_mul", "channel_add"))
    _randomise(block, seed=5)
    x = torch.randn(2, 32, 12, 13)
    ref = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


def test_softmax_in_fp32_under_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention softmax sees fp32 logits even when autocast makes the convs bf16."""
    seen: list[torch.dtype] = []
    real_softmax = torch.softmax

    def spy(t: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        seen.append(t.dtype)
        return real_softmax(t, *args, **kwargs)

    monkeypatch.setattr(torch, "softmax", spy)
    block = ContextBlock(16, 1 / 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert block.conv_mask(torch.randn(1, 16, 6, 6)).dtype == torch.bfloat16
        block(torch.randn(1, 16, 6, 6))
    assert seen == [torch.float32]


@pytest.mark.parametrize("fusions", [("channel_add",), ("channel_mul", "channel_add")])
def test_fuse_inplace_same_values_and_safe_with_autograd(fusions: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    block = ContextBlock(8, 0.5, "att", fusions)
    _randomise(block)
    x = torch.randn(2, 8, 5, 6)
    expected = block(x)
    block.fuse_inplace = True
    with torch.no_grad():
        x_copy = x.clone()
        out = block(x_copy)
    assert torch.equal(out, expected)
    assert out.data_ptr() == x_copy.data_ptr()  # really written into the input
    # With autograd on, the input is left alone (it is needed for the backward pass).
    x_grad = x.clone().requires_grad_(True)
    out = block(x_grad)
    out.sum().backward()
    assert torch.equal(x_grad.detach(), x) and torch.equal(out.detach(), expected)


def test_gradients_flow() -> None:
    block = ContextBlock(8, 0.5)
    _randomise(block)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    block(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in block.parameters())
    assert x.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(dtype: torch.dtype) -> None:
    block = ContextBlock(64, 1 / 4, "att", ("channel_mul", "channel_add"))
    _randomise(block)
    x = torch.randn(2, 64, 25, 38)
    ref = _reference(block, x)
    block, xc = block.cuda(), x.cuda()
    torch.testing.assert_close(block(xc).double().cpu(), ref, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=dtype):
        out = block(xc)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=5e-2, atol=5e-2)
