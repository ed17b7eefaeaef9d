"""Element-wise box losses with the original's weighting: sum / avg_factor when given, else mean."""

from __future__ import annotations

import torch
from torch import Tensor


def _reduce(loss: Tensor, weight: Tensor | None, avg_factor: float | Tensor | None) -> Tensor:
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean()
    return loss.sum() / avg_factor


def l1_loss(
    pred: Tensor, target: Tensor, weight: Tensor | None = None, avg_factor: float | Tensor | None = None
) -> Tensor:
    if pred.shape != target.shape:
        raise ValueError(f"l1_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if target.numel() == 0:
        return pred.sum() * 0
    return _reduce((pred - target).abs(), weight, avg_factor)


def smooth_l1_loss(
    pred: Tensor,
    target: Tensor,
    beta: float,
    weight: Tensor | None = None,
    avg_factor: float | Tensor | None = None,
) -> Tensor:
    """0.5 d^2 / beta where |d| < beta, else |d| - beta / 2."""
    if pred.shape != target.shape:
        raise ValueError(f"smooth_l1_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if beta <= 0:
        raise ValueError(f"smooth_l1_loss: beta must be > 0, got {beta}")
    if target.numel() == 0:
        return pred.sum() * 0
    diff = (pred - target).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return _reduce(loss, weight, avg_factor)
