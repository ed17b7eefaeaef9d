"""Cascade Mask R-CNN RoI head (mmdet ``CascadeRoIHead``): 3 box stages, one mask head per stage.

Children ``bbox_head`` and ``mask_head`` are ``nn.ModuleList``s, giving the original's keys
``roi_head.bbox_head.{i}.*`` and ``roi_head.mask_head.{i}.*``.
Test: RoIs are refined by each stage's regression; final scores are the softmax of the MEAN of
the stages' raw logits; final boxes are the last stage's regression on the RoIs entering it;
masks are the mean of all mask heads' sigmoid maps (spec 5.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gcnet.boxes import DeltaXYWHBBoxCoder
from gcnet.models.config import RoIConfig, cascade_stages  # noqa: F401 (cascade_stages re-exported)
from gcnet.models.roi.bbox_head import Shared2FCBBoxHead, decode_all_classes, regress_by_label
from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois, nchw_levels
from gcnet.models.roi.inference import configured_nms, detections_of_batch, label_mask_probs
from gcnet.models.roi.mask_head import FCNMaskHead
from gcnet.models.roi.standard import RoIHeadOutput, check_inputs
from gcnet.models.roi.targets import (
    SampledRoIs,
    bbox_losses,
    mask_branch_loss,
    sample_rois,
    stage_samplers,
)
from gcnet.structures import Detections, ImageMeta, Targets


class CascadeRoIHead(nn.Module):
    def __init__(self, cfg: RoIConfig, with_mask: bool = True) -> None:
        super().__init__()  # RoIConfig holds at least one stage
        self.cfg = cfg
        self.with_mask = with_mask
        self.num_classes = cfg.num_classes
        self.num_stages = len(cfg.stages)
        self.bbox_roi_extractor = RoIExtractor(cfg.featmap_strides, cfg.bbox_roi_size, cfg.finest_scale)
        self.bbox_head = nn.ModuleList(
            Shared2FCBBoxHead(
                cfg.num_classes, cfg.in_channels, cfg.bbox_roi_size, cfg.fc_channels, s.reg_class_agnostic
            )
            for s in cfg.stages
        )
        self.coders = [DeltaXYWHBBoxCoder((0.0, 0.0, 0.0, 0.0), s.target_stds) for s in cfg.stages]
        self.samplers = [stage_samplers(s, cfg.num_samples, cfg.pos_fraction) for s in cfg.stages]
        if with_mask:
            self.mask_roi_extractor = RoIExtractor(cfg.featmap_strides, cfg.mask_roi_size, cfg.finest_scale)
            self.mask_head = nn.ModuleList(
                FCNMaskHead(cfg.num_classes, cfg.in_channels, cfg.in_channels, cfg.mask_convs) for _ in cfg.stages
            )

    def forward(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets] | None = None,
    ) -> RoIHeadOutput:
        """Loss dict (``s{t}.loss_*``, already weighted) with ``targets``, else per-image ``Detections``."""
        check_inputs(feats, proposals, metas, targets, len(self.cfg.featmap_strides), self.with_mask)
        feats = nchw_levels(feats, len(self.cfg.featmap_strides))  # once, not in every roi_align
        if targets is not None:
            return self.loss(feats, proposals, metas, targets)
        return self.predict(feats, proposals, metas)

    # ------------------------------------------------------------------ training
    def loss(
        self,
        feats: Sequence[Tensor],
        proposals: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        targets: Sequence[Targets],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        current = [p[:, :4].detach() for p in proposals]
        add_gt = self.cfg.add_gt_as_proposals
        for t, stage in enumerate(self.cfg.stages):
            assigner, sampler = self.samplers[t]
            samples = [
                sample_rois(b, tg.boxes, tg.labels, assigner, sampler, self.num_classes, add_gt)
                for b, tg in zip(current, targets)
            ]
            rois = boxes_to_rois([s.boxes for s in samples])
            cls_score, deltas = self.bbox_head[t](self.bbox_roi_extractor(feats, rois))
            stage_losses = bbox_losses(cls_score, deltas, samples, self.coders[t], self.num_classes, stage)
            if self.with_mask:
                stage_losses["loss_mask"] = mask_branch_loss(
                    self.mask_head[t], self.mask_roi_extractor, feats, samples, targets, self.cfg.mask_size
                )
            for name, value in stage_losses.items():
                losses[f"s{t}.{name}"] = value * stage.loss_weight
            if t + 1 < self.num_stages:
                # With no RoI left the original stops here; going on through the empty stages gives
                # the same (zero) losses, and every rank the same loss keys and used parameters (DDP).
                with torch.no_grad():
                    current = self._refine_sampled(t, samples, cls_score, deltas, metas)
        return losses

    def _refine_sampled(
        self,
        t: int,
        samples: list[SampledRoIs],
        cls_score: Tensor,
        deltas: Tensor,
        metas: Sequence[ImageMeta],
    ) -> list[Tensor]:
        """Next stage's candidates: the sampled RoIs moved by stage t, without the added gt boxes.

        Label used for class-specific regression: the gt label for positives, the argmax of the
        foreground logits for negatives (mmdet 3.x ``refine_bboxes``).
        """
        counts = [s.boxes.shape[0] for s in samples]
        out = []
        for s, logits, d, meta in zip(samples, cls_score.split(counts), deltas.split(counts), metas):
            labels = torch.where(s.labels == self.num_classes, logits[:, :-1].argmax(dim=1), s.labels)
            moved = regress_by_label(self.coders[t], s.boxes.float(), d.float(), labels, meta.img_shape)
            keep = torch.ones(moved.shape[0], dtype=torch.bool, device=moved.device)
            keep[: s.num_pos] = ~s.pos_is_gt
            out.append(moved[keep])
        return out

    # ------------------------------------------------------------------ inference
    def predict(
        self, feats: Sequence[Tensor], proposals: Sequence[Tensor], metas: Sequence[ImageMeta]
    ) -> list[Detections]:
        boxes = [p[:, :4].float() for p in proposals]
        counts = [b.shape[0] for b in boxes]
        logit_sum: list[Tensor] | None = None
        deltas_last: list[Tensor] = []
        for t in range(self.num_stages):
            rois = boxes_to_rois(boxes)
            cls_score, deltas = self.bbox_head[t](self.bbox_roi_extractor(feats, rois))
            cls_parts = [c.float() for c in cls_score.split(counts)]
            delta_parts = [d.float() for d in deltas.split(counts)]
            logit_sum = cls_parts if logit_sum is None else [a + c for a, c in zip(logit_sum, cls_parts)]
            if t + 1 < self.num_stages:
                boxes = [
                    regress_by_label(self.coders[t], b, d, c[:, :-1].argmax(dim=1), meta.img_shape)
                    for b, d, c, meta in zip(boxes, delta_parts, cls_parts, metas)
                ]
            else:
                deltas_last = delta_parts
        assert logit_sum is not None
        kept = []
        for b, summed, d, meta in zip(boxes, logit_sum, deltas_last, metas):
            scores = torch.softmax(summed / float(self.num_stages), dim=-1)
            decoded = decode_all_classes(self.coders[-1], b, d, meta.img_shape)
            kept.append(configured_nms(decoded, scores, self.cfg))
        mask_probs = None
        if self.with_mask:
            mask_probs = label_mask_probs(self.mask_roi_extractor, self.mask_head, feats, kept, self.cfg.mask_size)
        return detections_of_batch(kept, mask_probs, metas, self.cfg.mask_thr)
