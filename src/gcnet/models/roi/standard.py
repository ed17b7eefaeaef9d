"""Mask R-CNN RoI head (mmdet ``StandardRoIHead``): one box stage plus one mask head.

Children ``bbox_head`` and ``mask_head`` give the original's keys ``roi_head.bbox_head.*`` and
``roi_head.mask_head.*``; the RoI extractors have no parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gcnet.boxes import DeltaXYWHBBoxCoder
from gcnet.models.config import RoIConfig
from gcnet.models.roi.bbox_head import Shared2FCBBoxHead, decode_all_classes
from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois, nchw_levels
from gcnet.models.roi.inference import configured_nms, detections_of_batch, label_mask_probs
from gcnet.models.roi.mask_head import FCNMaskHead
from gcnet.models.roi.targets import bbox_losses, mask_branch_loss, sample_rois, stage_samplers
from gcnet.structures import Detections, ImageMeta, Targets

RoIHeadOutput = dict[str, Tensor] | list[Detections]


def check_inputs(
    feats: Sequence[Tensor],
    proposals: Sequence[Tensor],
    metas: Sequence[ImageMeta],
    targets: Sequence[Targets] | None,
    num_levels: int,
    with_mask: bool,
) -> None:
    """Clear errors for mismatched per-image lists (shared by both RoI heads)."""
    if len(feats) < num_levels:
        raise ValueError(f"RoI head: need at least {num_levels} feature levels, got {len(feats)}")
    if len(proposals) != len(metas):
        raise ValueError(f"RoI head: {len(proposals)} proposal sets for {len(metas)} images")
    for i, p in enumerate(proposals):
        if p.dim() != 2 or p.shape[1] not in (4, 5):
            raise ValueError(f"RoI head: proposals of image {i} must be [K, 4] or [K, 5], got {tuple(p.shape)}")
    if targets is not None:
        if len(targets) != len(metas):
            raise ValueError(f"RoI head: {len(targets)} targets for {len(metas)} images")
        for i, t in enumerate(targets):
            if with_mask and t.masks is None:
                raise ValueError(f"RoI head: targets of image {i} have no masks but the head has a mask branch")


class StandardRoIHead(nn.Module):
    """Box head (class-specific regression) and FCN mask head on RoIAligned FPN features."""

    def __init__(self, cfg: RoIConfig, with_mask: bool = True) -> None:
        super().__init__()
        if len(cfg.stages) != 1:
            raise ValueError(f"StandardRoIHead: cfg.stages must hold 1 stage, got {len(cfg.stages)}")
        self.cfg = cfg
        self.stage = cfg.stages[0]
        self.with_mask = with_mask
        self.num_classes = cfg.num_classes
        self.bbox_roi_extractor = RoIExtractor(cfg.featmap_strides, cfg.bbox_roi_size, cfg.finest_scale)
        self.bbox_head = Shared2FCBBoxHead(
            cfg.num_classes, cfg.in_channels, cfg.bbox_roi_size, cfg.fc_channels, self.stage.reg_class_agnostic
        )
        self.coder = DeltaXYWHBBoxCoder((0.0, 0.0, 0.0, 0.0), self.stage.target_stds)
        self.assigner, self.sampler = stage_samplers(self.stage, cfg.num_samples, cfg.pos_fraction)
        if with_mask:
            self.mask_roi_extractor = RoIExtractor(cfg.featmap_strides, cfg.mask_roi_size, cfg.finest_scale)
            self.mask_head = FCNMaskHead(cfg.num_classes, cfg.in_channels, cfg.in_channels, cfg.mask_convs)

    def forward(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets] | None = None,
    ) -> RoIHeadOutput:
        """Loss dict when ``targets`` are given, else one ``Detections`` per image (original pixels)."""
        check_inputs(feats, proposals, metas, targets, len(self.cfg.featmap_strides), self.with_mask)
        feats = nchw_levels(feats, len(self.cfg.featmap_strides))  # once, not in every roi_align
        if targets is not None:
            return self.loss(feats, proposals, targets)
        return self.predict(feats, proposals, metas)

    # ------------------------------------------------------------------ training
    def loss(
        self, feats: Sequence[Tensor], proposals: Sequence[Tensor], targets: Sequence[Targets]
    ) -> dict[str, Tensor]:
        add_gt = self.cfg.add_gt_as_proposals
        samples = [
            sample_rois(p, t.boxes, t.labels, self.assigner, self.sampler, self.num_classes, add_gt)
            for p, t in zip(proposals, targets)
        ]
        rois = boxes_to_rois([s.boxes for s in samples])
        cls_score, deltas = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        losses = bbox_losses(cls_score, deltas, samples, self.coder, self.num_classes, self.stage)
        if self.with_mask:
            losses["loss_mask"] = mask_branch_loss(
                self.mask_head, self.mask_roi_extractor, feats, samples, targets, self.cfg.mask_size
            )
        weight = self.stage.loss_weight
        return {k: v * weight for k, v in losses.items()}

    # ------------------------------------------------------------------ inference
    def predict(
        self, feats: Sequence[Tensor], proposals: Sequence[Tensor], metas: Sequence[ImageMeta]
    ) -> list[Detections]:
        boxes = [p[:, :4] for p in proposals]
        rois = boxes_to_rois(boxes)
        cls_score, deltas = self.bbox_head(self.bbox_roi_extractor(feats, rois))
        counts = [b.shape[0] for b in boxes]
        kept = []
        for b, logits, d, meta in zip(boxes, cls_score.split(counts), deltas.split(counts), metas):
            scores = torch.softmax(logits.float(), dim=-1)
            decoded = decode_all_classes(self.coder, b.float(), d.float(), meta.img_shape)
            kept.append(configured_nms(decoded, scores, self.cfg))
        mask_probs = None
        if self.with_mask:
            mask_probs = label_mask_probs(self.mask_roi_extractor, [self.mask_head], feats, kept, self.cfg.mask_size)
        return detections_of_batch(kept, mask_probs, metas, self.cfg.mask_thr)
