"""Region proposal network head (mmdet ``RPNHead``): objectness + deltas per anchor, proposals, losses.

Parameter names follow the original's state_dict (``rpn_head.rpn_conv/rpn_cls/rpn_reg``).
Convolutions run batched over the images; top-k, decoding, NMS and targets run per image.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gcnet.boxes import (
    AnchorGenerator,
    DeltaXYWHBBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    anchor_inside_flags,
    batched_nms,
    l1_loss,
    smooth_l1_loss,
)
from gcnet.config import RPNConfig
from gcnet.structures import ImageMeta, Targets


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then 1x1 sigmoid objectness (A) and 1x1 deltas (4A) on every level.

    ``size_divisor`` is the padding divisor of the data pipeline: like the original, training
    ignores anchors outside each image's own padded extent (its ``valid_flags`` on ``pad_shape``).
    """

    def __init__(self, cfg: RPNConfig, size_divisor: int = 32) -> None:
        super().__init__()
        if size_divisor <= 0:
            raise ValueError(f"RPNHead: size_divisor must be > 0, got {size_divisor}")
        self.cfg = cfg
        self.size_divisor = int(size_divisor)
        self.anchor_generator = AnchorGenerator(cfg.strides, cfg.scales, cfg.ratios)
        num_anchors = self.anchor_generator.num_anchors_per_location
        self.rpn_conv = nn.Conv2d(cfg.in_channels, cfg.feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(cfg.feat_channels, num_anchors, 1)
        self.rpn_reg = nn.Conv2d(cfg.feat_channels, num_anchors * 4, 1)
        self.coder = DeltaXYWHBBoxCoder()  # means 0, stds 1 for the RPN
        self.assigner = MaxIoUAssigner(cfg.pos_iou, cfg.neg_iou, cfg.min_pos_iou, cfg.match_low_quality)
        self.sampler = RandomSampler(cfg.num_samples, cfg.pos_fraction)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.01) weights, zero biases (the original's RPN init)."""
        for conv in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def head(self, feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Raw outputs per level: logits [N, A, H, W] and deltas [N, 4A, H, W]."""
        cls_outs, reg_outs = [], []
        for x in feats:
            h = F.relu(self.rpn_conv(x), inplace=True)  # the conv's fresh output; saves a map allocation
            cls_outs.append(self.rpn_cls(h))
            reg_outs.append(self.rpn_reg(h))
        return cls_outs, reg_outs

    def forward(
        self,
        feats: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Per-image proposals [K, 5] (x1, y1, x2, y2, score; detached) and, with targets, losses."""
        self._check_inputs(feats, metas, targets)
        cls_outs, reg_outs = self.head(feats)
        sizes = [(int(c.shape[-2]), int(c.shape[-1])) for c in cls_outs]
        anchors = self.anchor_generator.grid_anchors(sizes, device=feats[0].device)
        # (N, A, H, W) -> (N, H, W, A): flat index (y*W + x)*A + a, matching the anchor order.
        num = len(metas)
        cls_flat = [c.permute(0, 2, 3, 1).reshape(num, -1) for c in cls_outs]
        reg_flat = [r.permute(0, 2, 3, 1).reshape(num, -1, 4) for r in reg_outs]

        if self.training:
            nms_pre, max_per_img = self.cfg.train_nms_pre, self.cfg.train_max_per_img
        else:
            nms_pre, max_per_img = self.cfg.test_nms_pre, self.cfg.test_max_per_img
        with torch.no_grad():
            proposals = [
                self.proposals_single(
                    [c[i].detach() for c in cls_flat],
                    [r[i].detach() for r in reg_flat],
                    anchors,
                    metas[i].img_shape,
                    nms_pre,
                    max_per_img,
                )
                for i in range(num)
            ]
        losses: dict[str, Tensor] = {}
        if targets is not None:
            losses = self.loss(torch.cat(cls_flat, 1), torch.cat(reg_flat, 1), anchors, sizes, metas, targets)
        return proposals, losses

    def proposals_single(
        self,
        scores_per_level: Sequence[Tensor],
        deltas_per_level: Sequence[Tensor],
        anchors_per_level: Sequence[Tensor],
        img_shape: tuple[int, int],
        nms_pre: int,
        max_per_img: int,
    ) -> Tensor:
        """The original's test procedure for one image (per-level top-k, decode, size filter, NMS)."""
        scores_all, deltas_all, anchors_all, level_all = [], [], [], []
        for level, (logits, deltas, anchors) in enumerate(
            zip(scores_per_level, deltas_per_level, anchors_per_level)
        ):
            scores = logits.float().sigmoid()
            deltas = deltas.float()
            if 0 < nms_pre < scores.shape[0]:
                scores, order = scores.sort(descending=True)
                top = order[:nms_pre]
                scores = scores[:nms_pre]
                deltas, anchors = deltas[top], anchors[top]
            scores_all.append(scores)
            deltas_all.append(deltas)
            anchors_all.append(anchors)
            level_all.append(torch.full_like(scores, level, dtype=torch.long))
        scores = torch.cat(scores_all)
        levels = torch.cat(level_all)
        boxes = self.coder.decode(torch.cat(anchors_all), torch.cat(deltas_all), max_shape=img_shape)
        min_size = self.cfg.min_bbox_size
        if min_size >= 0:
            w = boxes[:, 2] - boxes[:, 0]
            h = boxes[:, 3] - boxes[:, 1]
            valid = (w > min_size) & (h > min_size)
            if not bool(valid.all()):
                boxes, scores, levels = boxes[valid], scores[valid], levels[valid]
        if boxes.shape[0] == 0:
            return boxes.new_zeros((0, 5))
        keep = batched_nms(boxes, scores, levels, self.cfg.nms_iou)[:max_per_img]
        return torch.cat([boxes[keep], scores[keep, None]], dim=1)

    def loss(
        self,
        cls_flat: Tensor,
        reg_flat: Tensor,
        anchors_per_level: Sequence[Tensor],
        featmap_sizes: Sequence[tuple[int, int]],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets],
    ) -> dict[str, Tensor]:
        """Sigmoid BCE over sampled anchors + L1 / SmoothL1 over positives.

        Both are summed over the batch and divided by the number of sampled anchors, each image
        counting at least one positive and one negative (the original's ``avg_factor``).
        """
        anchors = torch.cat(list(anchors_per_level))
        cls_sum = cls_flat.new_zeros((), dtype=torch.float32)
        reg_sum = cls_flat.new_zeros((), dtype=torch.float32)
        avg_factor = 0
        for i, (meta, target) in enumerate(zip(metas, targets)):
            pad_shape = tuple(
                int(math.ceil(s / self.size_divisor)) * self.size_divisor for s in meta.img_shape
            )
            valid = torch.cat(self.anchor_generator.valid_flags(featmap_sizes, pad_shape, anchors.device))
            inside = valid & anchor_inside_flags(anchors, meta.img_shape, self.cfg.allowed_border)
            inside_idx = inside.nonzero().view(-1)
            gt = target.boxes.to(device=anchors.device, dtype=torch.float32).reshape(-1, 4)
            assign = self.assigner.assign(anchors[inside_idx], gt)
            pos, neg = self.sampler.sample(assign)
            avg_factor += max(pos.numel(), 1) + max(neg.numel(), 1)

            sampled = torch.cat([pos, neg])
            labels = torch.cat([cls_flat.new_ones(pos.numel()), cls_flat.new_zeros(neg.numel())]).float()
            logits = cls_flat[i, inside_idx[sampled]].float()
            cls_sum = cls_sum + F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")

            pred = reg_flat[i, inside_idx[pos]].float()
            if pos.numel() > 0:
                pos_anchors = anchors[inside_idx[pos]]
                pos_gt = gt[assign.gt_inds[pos] - 1]
                target_deltas = self.coder.encode(pos_anchors, pos_gt)
            else:
                target_deltas = pred.detach().new_zeros(pred.shape)
            if self.cfg.loss_bbox == "smooth_l1":
                reg_sum = reg_sum + smooth_l1_loss(pred, target_deltas, self.cfg.smooth_l1_beta, avg_factor=1.0)
            else:
                reg_sum = reg_sum + l1_loss(pred, target_deltas, avg_factor=1.0)
        return {
            "loss_rpn_cls": cls_sum / avg_factor * self.cfg.loss_cls_weight,
            "loss_rpn_bbox": reg_sum / avg_factor * self.cfg.loss_bbox_weight,
        }

    def _check_inputs(
        self, feats: Sequence[Tensor], metas: Sequence[ImageMeta], targets: Sequence[Targets] | None
    ) -> None:
        levels = self.anchor_generator.num_levels
        if len(feats) != levels:
            raise ValueError(
                f"RPNHead.forward: feats has {len(feats)} levels, expected {levels} "
                f"(strides {self.cfg.strides})"
            )
        batch = int(feats[0].shape[0])
        if len(metas) != batch:
            raise ValueError(f"RPNHead.forward: {len(metas)} metas for a batch of {batch} images")
        if targets is not None and len(targets) != batch:
            raise ValueError(f"RPNHead.forward: {len(targets)} targets for a batch of {batch} images")
        if self.cfg.loss_bbox not in ("l1", "smooth_l1"):
            raise ValueError(f"RPNHead: cfg.loss_bbox must be 'l1' or 'smooth_l1', got {self.cfg.loss_bbox!r}")
