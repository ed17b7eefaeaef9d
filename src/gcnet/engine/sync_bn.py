"""Synchronised BatchNorm for the "syncbn" backbones: statistics over every process's images.

On CUDA the trainer uses ``torch.nn.SyncBatchNorm``; it only runs on CUDA, so on CPU (gloo) this
module's :class:`SyncBatchNorm2d` does the same job: it all-reduces (sum, sum of squares, count)
in the forward and (sum dy, sum dy*xhat) in the backward. The original's SyncBN configs train 16
images per step with statistics over all 8 GPUs (``norm_eval=False``; frozen stages stay eval).
"""

from __future__ import annotations

from typing import Any, TypeGuard, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _reduce_dims(x: Tensor) -> list[int]:
    return [0] + list(range(2, x.dim()))


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    return t.view([1, -1] + [1] * (x.dim() - 2))


class _SyncBNFunction(torch.autograd.Function):
    """Batch norm whose mean/var and whose input gradient use sums over the process group.

    Weight and bias gradients stay local: DDP averages them like any other parameter gradient.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        group: dist.ProcessGroup | None,
    ) -> Tensor:
        channels = x.shape[1]
        dims = _reduce_dims(x)
        xf = x.float()
        if x.numel() > 0:
            local_sum = xf.sum(dims)
            local_sq = (xf * xf).sum(dims)
        else:  # an empty per-rank batch still joins the collective (else the others hang)
            local_sum = xf.new_zeros(channels)
            local_sq = xf.new_zeros(channels)
        local_count = xf.new_full((1,), float(x.numel() // max(channels, 1)))
        stats = torch.cat([local_sum, local_sq, local_count]).double()
        dist.all_reduce(stats, group=group)
        count = float(stats[-1].item())
        ctx.group = group
        ctx.count = count
        if count == 0:  # every rank is empty: nothing to normalise or to learn from
            ctx.save_for_backward(x, weight, None, None)
            return x.clone()
        mean = stats[:channels] / count
        var = (stats[channels : 2 * channels] / count - mean * mean).clamp_min(0.0)
        if running_mean is not None and running_var is not None:
            unbiased = var * (count / (count - 1)) if count > 1 else var
            running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)
        mean32 = mean.float()
        invstd = torch.rsqrt(var + eps).float()
        y = (xf - _channel_view(mean32, x)) * _channel_view(invstd, x)
        if weight is not None:
            y = y * _channel_view(weight.float(), x)
        if bias is not None:
            y = y + _channel_view(bias.float(), x)
        ctx.save_for_backward(x, weight, mean32, invstd)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        none5 = (None,) * 5
        if ctx.count == 0:
            grad_w = None if weight is None else torch.zeros_like(weight)
            return (torch.zeros_like(x), grad_w, None if grad_w is None else grad_w.clone()) + none5
        dims = _reduce_dims(x)
        g = grad_out.float()
        xhat = (x.float() - _channel_view(mean, x)) * _channel_view(invstd, x)
        sum_dy = g.sum(dims) if x.numel() > 0 else g.new_zeros(mean.shape)
        sum_dy_xhat = (g * xhat).sum(dims) if x.numel() > 0 else g.new_zeros(mean.shape)
        grad_weight = sum_dy_xhat.to(weight.dtype) if weight is not None else None
        grad_bias = sum_dy.to(weight.dtype) if weight is not None else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            both = torch.cat([sum_dy, sum_dy_xhat]).double()
            dist.all_reduce(both, group=ctx.group)
            channels = mean.shape[0]
            mean_dy = (both[:channels] / ctx.count).float()
            mean_dy_xhat = (both[channels:] / ctx.count).float()
            scale = invstd if weight is None else invstd * weight.float()
            grad_x = g - _channel_view(mean_dy, x) - xhat * _channel_view(mean_dy_xhat, x)
            grad_x = (grad_x * _channel_view(scale, x)).to(x.dtype)
        return (grad_x, grad_weight, grad_bias) + none5


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics span the process group (CPU / gloo capable).

    Same parameters, buffers and state_dict keys as BatchNorm2d; outside training, or with a
    single process, it is exactly BatchNorm2d.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.process_group = process_group

    def _synchronised(self) -> bool:
        return (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(self.process_group) > 1
        )

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not self._synchronised():
            return super().forward(x)
        factor = 0.0 if self.momentum is None else float(self.momentum)
        track = self.track_running_stats and self.running_mean is not None
        if track:
            tracked = cast(Tensor, self.num_batches_tracked)  # registered with the running stats
            tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm does
                factor = 1.0 / float(tracked.item())
        return _SyncBNFunction.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.eps,
            factor,
            self.process_group,
        )


def _is_live(bn: nn.Module) -> bool:
    """A BN that trains or computes batch statistics; frozen (eval, no-grad) ones are left as is."""
    return bn.training or any(p.requires_grad for p in bn.parameters())


def convert_sync_batchnorm(
    module: nn.Module,
    device: torch.device | str,
    process_group: dist.ProcessGroup | None = None,
) -> nn.Module:
    """Replace every live ``nn.BatchNorm2d`` under ``module`` by a synchronised one, in place.

    ``torch.nn.SyncBatchNorm`` on CUDA, :class:`SyncBatchNorm2d` elsewhere. Parameters (with their
    ``requires_grad``), buffers and train/eval mode carry over; frozen BNs (eval and without
    trainable parameters, e.g. the stem and layer1 with ``frozen_stages=1``) stay BatchNorm2d.
    Call after ``model.train()`` so the frozen ones are recognisable. Returns the converted module.
    """
    device = torch.device(device)
    if _convertible(module):
        return _convert_one(module, device, process_group)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, device, process_group)
        if new is not child:
            setattr(module, name, new)
    return module


def _convertible(module: nn.Module) -> TypeGuard[nn.BatchNorm2d]:
    return isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d) and _is_live(module)


def _convert_one(bn: nn.BatchNorm2d, device: torch.device, group: dist.ProcessGroup | None) -> nn.Module:
    cls: type[nn.modules.batchnorm._BatchNorm]
    cls = nn.SyncBatchNorm if device.type == "cuda" else SyncBatchNorm2d
    new = cls(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        process_group=group,
    )
    if bn.affine:
        with torch.no_grad():
            new.weight = bn.weight
            new.bias = bn.bias
    new.running_mean = bn.running_mean
    new.running_var = bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new
