"""Parameters and FLOPs of a detector's parts, counted by torch's ``FlopCounterMode``.

The count is shape-only: the model is built and run under ``FakeTensorMode`` (tensors with shapes
and dtypes but no storage), so a Cascade X-101 at 1333x800 is counted in about a second on a CPU
and every op runs its real code path (the deformable convs included, which the meta device cannot
run). Conventions, stated once:

- one multiply-add counts as 2 FLOPs (torch's convention; mmcv/fvcore count it as 1: halve ours to
  compare with mmdetection's ``get_flops``);
- only convolutions and matrix products are counted (torch's formulas); normalisation, activations,
  additions, softmax, RoIAlign, NMS and mask pasting are not. The deformable conv (torchvision's op,
  which torch has no formula for) is counted as the convolution it computes, its bilinear sampling not;
- the input is an image of ``image_size`` (w, h; by default the config's test scale, 1333x800 for
  the zoo), padded as the test pipeline pads it (1333x800 -> 1344x800 with the size divisor 32);
- the RoI heads run on as many RoIs as the test settings allow at most, forced by calling them on
  that many RoI features: the box head(s) on ``rpn.test_max_per_img`` proposals (1000), the mask
  head(s) on ``roi.max_per_img`` detections (100). A cascade runs 3 box heads on 1000 RoIs each and,
  as the original's test, all 3 mask heads on the final 100 detections.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from gcnet.build import build
from gcnet.config import Config
from gcnet.errors import UserError
from gcnet.structures import round_up_shape

PARTS = ("backbone", "neck", "rpn_head", "roi_bbox", "roi_mask")


@dataclass(frozen=True)
class PartCount:
    name: str
    params: int
    flops: int


@dataclass(frozen=True)
class FlopCount:
    """Parameters and FLOPs per part of one config, and what was counted."""

    config: str
    input_hw: tuple[int, int]  # the padded batch the network saw
    num_proposals: int
    num_detections: int
    parts: tuple[PartCount, ...]

    @property
    def params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def flops(self) -> int:
        return sum(p.flops for p in self.parts)

    def part(self, name: str) -> PartCount:
        return next(p for p in self.parts if p.name == name)


def _deform_conv_flop(
    x_shape: Sequence[int], w_shape: Sequence[int], *args: Any, out_shape: Sequence[int] | None = None, **kwargs: Any
) -> int:
    """torchvision's deform_conv2d as the convolution it computes: 2 x output x (in/groups x kh x kw)."""
    assert out_shape is not None
    return 2 * prod(out_shape) * prod(w_shape[1:])


def _counter() -> FlopCounterMode:
    mapping = {torch.ops.torchvision.deform_conv2d: _deform_conv_flop}  # keyed by the op, as torch's formulas
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _params(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def _stages(module: nn.Module) -> list[nn.Module]:
    return list(module) if isinstance(module, nn.ModuleList) else [module]


def count_flops(cfg: Config, image_size: tuple[int, int] | None = None) -> FlopCount:
    """Count ``cfg``'s detector at ``image_size`` (w, h; default: its test scale ``data.scale``)
    part by part (see the module docstring)."""
    w, h = cfg.data.scale if image_size is None else image_size
    if w < 1 or h < 1:
        raise UserError(f"image size must be positive, got {w}x{h}")
    hw = round_up_shape((h, w), cfg.data.size_divisor)
    roi = cfg.model.roi
    num_proposals = cfg.model.rpn.test_max_per_img
    num_detections = roi.max_per_img if roi.max_per_img > 0 else num_proposals
    counts: list[PartCount] = []
    with FakeTensorMode(), torch.no_grad():
        model = build(cfg).model
        images = torch.zeros(1, 3, *hw)

        def run(name: str, modules: Sequence[nn.Module], fn: Any) -> Any:
            with _counter() as counter:
                out = fn()
            counts.append(PartCount(name, _params(*modules), int(counter.get_total_flops())))
            return out

        c = run("backbone", [model.backbone], lambda: model.backbone(images))
        p = run("neck", [model.neck], lambda: model.neck(c))
        run("rpn_head", [model.rpn_head], lambda: model.rpn_head(p))
        heads = model.roi_head
        box_feats = torch.zeros(num_proposals, roi.in_channels, roi.bbox_roi_size, roi.bbox_roi_size)
        box_heads = _stages(heads.bbox_head)
        run("roi_bbox", box_heads, lambda: [head(box_feats) for head in box_heads])
        if cfg.model.with_mask:
            mask_feats = torch.zeros(num_detections, roi.in_channels, roi.mask_roi_size, roi.mask_roi_size)
            mask_heads = _stages(heads.mask_head)
            run("roi_mask", mask_heads, lambda: [head(mask_feats) for head in mask_heads])
        total = _params(model)
    found = sum(x.params for x in counts)
    if found != total:  # a part with parameters that no count covers
        raise AssertionError(f"count_flops: the parts hold {found} parameters, the model {total}")
    return FlopCount(cfg.name, hw, num_proposals, num_detections, tuple(counts))


def plain_twin(cfg: Config) -> Config:
    """The same detector without GC blocks (what the GC block's cost is measured against)."""
    backbone = dataclasses.replace(cfg.model.backbone, gc_ratio=None)
    return dataclasses.replace(
        cfg, name=f"{cfg.name} without GC", model=dataclasses.replace(cfg.model, backbone=backbone)
    )


@dataclass(frozen=True)
class GCOverhead:
    """What the GC blocks add to a detector: FLOPs and parameters, absolute and relative."""

    flops: int
    params: int
    flops_share: float  # of the plain twin's total FLOPs
    backbone_flops_share: float  # of the plain twin's backbone FLOPs
    params_share: float


def gc_overhead(with_gc: FlopCount, plain: FlopCount) -> GCOverhead:
    extra_flops = with_gc.flops - plain.flops
    return GCOverhead(
        flops=extra_flops,
        params=with_gc.params - plain.params,
        flops_share=extra_flops / plain.flops,
        backbone_flops_share=extra_flops / plain.part("backbone").flops,
        params_share=(with_gc.params - plain.params) / plain.params,
    )


def format_count(count: FlopCount, overhead: GCOverhead | None = None) -> str:
    """The table ``gcnet flops`` prints."""
    h, w = count.input_hw
    lines = [
        f"{count.config}: input {w}x{h} (w x h, padded); box head(s) on {count.num_proposals} RoIs, "
        f"mask head(s) on {count.num_detections}",
        f"{'part':<10} {'params (M)':>11} {'GFLOPs':>9}",
    ]
    for part in count.parts:
        lines.append(f"{part.name:<10} {part.params / 1e6:>11.2f} {part.flops / 1e9:>9.1f}")
    lines.append(f"{'total':<10} {count.params / 1e6:>11.2f} {count.flops / 1e9:>9.1f}")
    if overhead is not None:
        lines.append(
            f"GC blocks: +{overhead.flops / 1e9:.2f} GFLOPs ({100 * overhead.flops_share:.2f}% of the plain "
            f"twin's total, {100 * overhead.backbone_flops_share:.2f}% of its backbone), "
            f"+{overhead.params / 1e6:.2f} M params ({100 * overhead.params_share:.1f}%)"
        )
    lines.append("FLOPs: a multiply-add counts 2 (torch's FlopCounterMode); convolutions and matrix products only")
    return "\n".join(lines)


def zoo_columns(params: int, flops: int, gc_flops_share: float | None) -> tuple[str, str, str]:
    """The three zoo-table cells: params (M), GFLOPs, GC share of the FLOPs ("-" without GC)."""
    gc = "-" if gc_flops_share is None else f"{100 * gc_flops_share:.2f}%"
    return f"{params / 1e6:.1f}", f"{flops / 1e9:.0f}", gc
