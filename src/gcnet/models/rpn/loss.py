"""The RPN's training loss: anchor assignment and sampling, sigmoid BCE + L1 / SmoothL1 (mmdet ``RPNHead.loss``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gcnet.boxes import (
    AnchorGenerator,
    DeltaXYWHBBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_inside_flags,
    l1_loss,
    smooth_l1_loss,
)
from gcnet.models.config import RPNConfig
from gcnet.models.rpn.levels import flatten_levels, level_anchors
from gcnet.structures import ImageMeta, Targets


class RPNLoss:
    """Head maps + ground truth -> ``loss_rpn_cls`` and ``loss_rpn_bbox``.

    Like the original, an anchor takes part only when its location lies inside the image's own
    padded extent (``valid_flags`` on ``ImageMeta.pad_shape``, which the collate step sets from the
    data pipeline's size divisor) and it is within ``allowed_border`` of the unpadded image.
    """

    def __init__(self, cfg: RPNConfig) -> None:
        if cfg.loss_bbox not in ("l1", "smooth_l1"):
            raise ValueError(f"RPNLoss: cfg.loss_bbox must be 'l1' or 'smooth_l1', got {cfg.loss_bbox!r}")
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.strides, cfg.scales, cfg.ratios)
        self.coder = DeltaXYWHBBoxCoder()  # means 0, stds 1 for the RPN
        self.assigner = MaxIoUAssigner(cfg.pos_iou, cfg.neg_iou, cfg.min_pos_iou, cfg.match_low_quality)
        self.sampler = RandomSampler(cfg.num_samples, cfg.pos_fraction)

    def __call__(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets],
    ) -> dict[str, Tensor]:
        """Both terms are summed over the batch and divided by the number of sampled anchors, each
        image counting at least one positive and one negative (the original's ``avg_factor``)."""
        sizes, anchors_per_level = level_anchors("RPNLoss", self.anchor_generator, logits, metas)
        if len(targets) != len(metas):
            raise ValueError(f"RPNLoss: {len(targets)} targets for a batch of {len(metas)} images")
        flat_logits, flat_deltas = flatten_levels(logits, deltas)
        cls_flat, reg_flat = torch.cat(flat_logits, 1), torch.cat(flat_deltas, 1)
        anchors = torch.cat(anchors_per_level)
        cls_sum = cls_flat.new_zeros((), dtype=torch.float32)
        reg_sum = cls_flat.new_zeros((), dtype=torch.float32)
        avg_factor = 0
        for i, (meta, target) in enumerate(zip(metas, targets)):
            cls_i, reg_i, sampled_i = self._image_sums(cls_flat[i], reg_flat[i], anchors, sizes, meta, target)
            cls_sum, reg_sum, avg_factor = cls_sum + cls_i, reg_sum + reg_i, avg_factor + sampled_i
        return {
            "loss_rpn_cls": cls_sum / avg_factor * self.cfg.loss_cls_weight,
            "loss_rpn_bbox": reg_sum / avg_factor * self.cfg.loss_bbox_weight,
        }

    def _image_sums(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        featmap_sizes: Sequence[tuple[int, int]],
        meta: ImageMeta,
        target: Targets,
    ) -> tuple[Tensor, Tensor, int]:
        """One image's summed BCE and box loss over its sampled anchors, and its share of ``avg_factor``."""
        cfg = self.cfg
        valid = torch.cat(self.anchor_generator.valid_flags(featmap_sizes, meta.pad_shape, anchors.device))
        inside = valid & anchor_inside_flags(anchors, meta.img_shape, cfg.allowed_border)
        inside_idx = inside.nonzero().view(-1)
        gt = target.boxes.to(device=anchors.device, dtype=torch.float32).reshape(-1, 4)
        assign = self.assigner.assign(anchors[inside_idx], gt)
        pos, neg = self.sampler.sample(assign)

        sampled = torch.cat([pos, neg])
        labels = torch.cat([logits.new_ones(pos.numel()), logits.new_zeros(neg.numel())]).float()
        sampled_logits = logits[inside_idx[sampled]].float()
        cls_sum = F.binary_cross_entropy_with_logits(sampled_logits, labels, reduction="sum")

        pred = deltas[inside_idx[pos]].float()
        if pos.numel() > 0:
            target_deltas = self.coder.encode(anchors[inside_idx[pos]], gt[assign.gt_inds[pos] - 1])
        else:
            target_deltas = pred.detach().new_zeros(pred.shape)
        if cfg.loss_bbox == "smooth_l1":
            reg_sum = smooth_l1_loss(pred, target_deltas, cfg.smooth_l1_beta, avg_factor=1.0)
        else:
            reg_sum = l1_loss(pred, target_deltas, avg_factor=1.0)
        return cls_sum, reg_sum, max(pos.numel(), 1) + max(neg.numel(), 1)
