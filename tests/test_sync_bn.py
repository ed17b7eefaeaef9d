"""CPU SyncBatchNorm2d: two gloo processes with 1 + 1 images equal one BatchNorm2d on 2 images
(outputs, running statistics, input and weight gradients), and an empty rank does not hang."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gcnet.engine import SyncBatchNorm2d, convert_sync_batchnorm, find_free_port, teardown_distributed

torch.set_num_threads(1)
C = 3


def _inputs() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, 4, 5, generator=g) * 3 + 1
    gy = torch.randn(2, C, 4, 5, generator=g)
    w = torch.rand(C, generator=g) + 0.5
    b = torch.randn(C, generator=g)
    x2 = torch.randn(2, C, 4, 5, generator=g)
    return x, gy, w, b, x2


def _bn(cls: type[nn.BatchNorm2d], w: torch.Tensor, b: torch.Tensor) -> nn.BatchNorm2d:
    bn = cls(C)
    with torch.no_grad():
        bn.weight.copy_(w)
        bn.bias.copy_(b)
    return bn


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    x, gy, w, b, x2 = _inputs()
    res: dict[str, object] = {}
    # 1 + 1 images, two training steps (running stats updated twice), gradients of the first.
    bn = _bn(SyncBatchNorm2d, w, b)
    xr = x[rank : rank + 1].clone().requires_grad_()
    y = bn(xr)
    (y * gy[rank : rank + 1]).sum().backward()
    bn(x2[rank : rank + 1])
    res.update(
        y=y.detach(),
        gx=xr.grad,
        gw=bn.weight.grad,
        gb=bn.bias.grad,
        rm=bn.running_mean.clone(),
        rv=bn.running_var.clone(),
        nbt=int(bn.num_batches_tracked),
    )
    # 2 + 0 images: rank 1 is empty and must still take part in both collectives.
    bn = _bn(SyncBatchNorm2d, w, b)
    xe = (x if rank == 0 else x[:0]).clone().requires_grad_()
    ye = bn(xe)
    (ye * (gy if rank == 0 else gy[:0])).sum().backward()
    res.update(ye=ye.detach(), gxe=xe.grad, rme=bn.running_mean.clone())
    # bf16 input: computed in fp32, returned in bf16.
    bn = _bn(SyncBatchNorm2d, w, b)
    res["y16"] = bn(x[rank : rank + 1].bfloat16())
    torch.save(res, Path(out) / f"{rank}.pt")
    teardown_distributed(barrier=True)  # gloo on torch < 2.8 can deadlock without it


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("syncbn")
    mp.spawn(_worker, args=(2, find_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"{r}.pt", weights_only=True) for r in range(2)]


def _reference() -> dict[str, torch.Tensor]:
    x, gy, w, b, x2 = _inputs()
    bn = _bn(nn.BatchNorm2d, w, b)
    xr = x.clone().requires_grad_()
    y = bn(xr)
    (y * gy).sum().backward()
    bn(x2)
    return dict(y=y.detach(), gx=xr.grad, gw=bn.weight.grad, gb=bn.bias.grad, rm=bn.running_mean, rv=bn.running_var)


@pytest.mark.slow  # spawns 2 processes (~5-15 s to start)
def test_two_ranks_equal_one_batch(results: list[dict]) -> None:
    ref = _reference()
    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat([r["y"] for r in results]), ref["y"], **close)
    torch.testing.assert_close(torch.cat([r["gx"] for r in results]), ref["gx"], **close)
    # weight/bias gradients are local; DDP sums (averages) them over ranks
    torch.testing.assert_close(results[0]["gw"] + results[1]["gw"], ref["gw"], **close)
    torch.testing.assert_close(results[0]["gb"] + results[1]["gb"], ref["gb"], **close)
    for r in results:
        torch.testing.assert_close(r["rm"], ref["rm"], **close)
        torch.testing.assert_close(r["rv"], ref["rv"], **close)  # unbiased over all 2*4*5 values
        assert r["nbt"] == 2


@pytest.mark.slow  # spawns 2 processes (~5-15 s to start)
def test_empty_rank_joins_and_matches(results: list[dict]) -> None:
    x, gy, w, b, _ = _inputs()
    bn = _bn(nn.BatchNorm2d, w, b)
    xr = x.clone().requires_grad_()
    y = bn(xr)
    (y * gy).sum().backward()
    torch.testing.assert_close(results[0]["ye"], y.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0]["gxe"], xr.grad, rtol=1e-5, atol=1e-5)
    assert results[1]["ye"].shape == (0, C, 4, 5) and results[1]["gxe"].shape == (0, C, 4, 5)
    torch.testing.assert_close(results[1]["rme"], bn.running_mean, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # spawns 2 processes (~5-15 s to start)
def test_bf16_input_returns_bf16(results: list[dict]) -> None:
    ref = _reference()["y"]
    y16 = torch.cat([r["y16"] for r in results])
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), ref, rtol=2e-2, atol=2e-2)


def test_single_process_is_plain_batchnorm() -> None:
    x, _, w, b, _ = _inputs()
    a, ref = _bn(SyncBatchNorm2d, w, b), _bn(nn.BatchNorm2d, w, b)
    torch.testing.assert_close(a(x), ref(x))
    torch.testing.assert_close(a.running_var, ref.running_var)
    assert list(a.state_dict()) == list(ref.state_dict())


def test_conversion_keeps_frozen_bn_and_state() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    frozen = model[1]
    frozen.eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        model[2][0].running_mean.fill_(0.25)
    keys = list(model.state_dict())
    live_weight = model[2][0].weight
    convert_sync_batchnorm(model, "cpu")
    assert type(model[1]) is nn.BatchNorm2d  # frozen stage: left alone
    assert isinstance(model[2][0], SyncBatchNorm2d)
    assert model[2][0].weight is live_weight and model[2][0].running_mean[0] == 0.25
    assert list(model.state_dict()) == keys
    cuda_model = nn.Sequential(nn.BatchNorm2d(4))
    convert_sync_batchnorm(cuda_model, "cuda")  # construction only: torch's own SyncBatchNorm
    assert isinstance(cuda_model[0], nn.SyncBatchNorm)
