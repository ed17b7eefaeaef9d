"""The 1x schedule: linear lr scaling, linear warm-up, step decay; values worked by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from gcnet.config import TrainConfig
from gcnet.engine.schedule import LRSchedule, build_optimizer, lr_at, scaled_lr, total_batch_size

ORIGINAL = TrainConfig()  # lr 0.02, warm-up 500 from 0.001, x0.1 at epochs 8 and 11, 12 epochs


def test_original_step_decay_after_epoch_8_and_11() -> None:
    # 1000 iterations per epoch, past warm-up: epochs 1-8 (index 0-7) at 0.02, 9-11 at 0.002, 12 at 0.0002.
    for epoch, expected in [(0, 0.02), (7, 0.02), (8, 0.002), (10, 0.002), (11, 0.0002)]:
        got = lr_at(ORIGINAL, 0.02, epoch, 999, 1000)
        assert got == pytest.approx(expected, rel=1e-12), epoch


def test_original_warmup_values() -> None:
    # lr_t = 0.02 * (0.001 + 0.999 * t / 500)
    assert lr_at(ORIGINAL, 0.02, 0, 0, 1000) == pytest.approx(0.00002, rel=1e-12)
    assert lr_at(ORIGINAL, 0.02, 0, 250, 1000) == pytest.approx(0.02 * 0.5005, rel=1e-12)  # 0.01001
    assert lr_at(ORIGINAL, 0.02, 0, 499, 1000) == pytest.approx(0.02 * (0.001 + 0.999 * 499 / 500))
    assert lr_at(ORIGINAL, 0.02, 0, 500, 1000) == pytest.approx(0.02)


def test_warmup_counts_global_steps_across_epochs() -> None:
    # 100 iterations per epoch: step 3 of epoch 2 is global step 203 -> 0.02 * (0.001 + 0.999 * 203/500).
    got = lr_at(ORIGINAL, 0.02, 2, 3, 100)
    assert got == pytest.approx(0.02 * (0.001 + 0.999 * 0.406), rel=1e-12)


def test_warmup_applies_on_top_of_decay() -> None:
    cfg = TrainConfig(milestones=(1,), warmup_iters=10, warmup_ratio=0.5)
    # epoch 1 has decayed to 0.1 * base; global step 5 (< 10) is still warming up: 0.1 * (0.5 + 0.5 * 0.5)
    assert lr_at(cfg, 1.0, 1, 1, 4) == pytest.approx(0.075)


def test_no_warmup_when_zero_iters() -> None:
    cfg = TrainConfig(warmup_iters=0)
    assert lr_at(cfg, 0.02, 0, 0, 10) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("images", "world", "accum", "expected"),
    [(2, 8, 1, 0.02), (2, 1, 1, 0.0025), (1, 2, 2, 0.005), (4, 8, 2, 0.08)],
)
def test_linear_lr_scaling(images: int, world: int, accum: int, expected: float) -> None:
    cfg = TrainConfig(grad_accum=accum)
    assert total_batch_size(cfg, images, world) == images * world * accum
    assert scaled_lr(cfg, images, world) == pytest.approx(expected)


def test_scaling_off_keeps_lr() -> None:
    assert scaled_lr(TrainConfig(scale_lr=False), 1, 1) == 0.02


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="grad_accum"):
        total_batch_size(TrainConfig(grad_accum=0), 2, 1)
    with pytest.raises(ValueError, match="iters_per_epoch"):
        lr_at(ORIGINAL, 0.02, 0, 0, 0)


def test_schedule_sets_every_group_and_round_trips_state() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    cfg = dataclasses.replace(ORIGINAL, warmup_iters=4, warmup_ratio=0.25)
    opt = build_optimizer(model, cfg, 0.1)
    assert len(opt.param_groups[0]["params"]) == 3  # the frozen one is left out
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 1e-4
    sched = LRSchedule(opt, cfg, 0.1, iters_per_epoch=3)
    assert sched.set(0, 2) == pytest.approx(0.1 * (0.25 + 0.75 * 2 / 4))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0625)
    other = LRSchedule(opt, cfg, 0.5, iters_per_epoch=3)
    other.load_state_dict(sched.state_dict())
    assert other.base_lr == 0.1
    with pytest.raises(ValueError, match="iterations per epoch"):
        LRSchedule(opt, cfg, 0.1, iters_per_epoch=5).load_state_dict(sched.state_dict())


def test_sgd_step_matches_hand_computation() -> None:
    # One SGD step from w=1 with grad 2: buf = 2 + 1e-4 * 1; w = 1 - lr * buf.
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    holder = nn.Module()
    holder.p = p
    opt = build_optimizer(holder, ORIGINAL, 0.5)
    p.grad = torch.tensor([2.0], dtype=torch.float64)
    opt.step()
    assert p.item() == pytest.approx(1.0 - 0.5 * (2.0 + 1e-4))
