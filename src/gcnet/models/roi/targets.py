"""Training targets and losses of one RoI stage (mmdet ``BBoxHead.loss`` / ``FCNMaskHead.loss``).

Order of operations as in the original: assign the proposals to the gts, THEN prepend the gts as
extra positives (``AssignResult.add_gt_``: gt k gets index k+1, IoU 1), then sample; sampled
RoIs are positives first, negatives after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from gcnet.boxes import (
    AssignResult,
    DeltaXYWHBBoxCoder,
    MaxIoUAssigner,
    RandomSampler,
    l1_loss,
    smooth_l1_loss,
)
from gcnet.models.config import RoIStageConfig
from gcnet.models.roi.bbox_head import select_deltas
from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois
from gcnet.structures import Targets


@dataclass
class SampledRoIs:
    """The RoIs one image contributes to a stage's losses (positives first).

    ``labels``: gt label for positives, ``num_classes`` (background) for negatives.
    ``pos_gt_inds``: index into the image's gts of each positive; ``pos_is_gt``: True where the
    positive is one of the gt boxes added as a proposal.
    """

    boxes: Tensor
    labels: Tensor
    num_pos: int
    pos_gt_inds: Tensor
    pos_is_gt: Tensor
    pos_gt_boxes: Tensor

    @property
    def pos_boxes(self) -> Tensor:
        return self.boxes[: self.num_pos]

    @property
    def pos_labels(self) -> Tensor:
        return self.labels[: self.num_pos]


def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    assigner: MaxIoUAssigner,
    sampler: RandomSampler,
    num_classes: int,
    add_gt_as_proposals: bool = True,
) -> SampledRoIs:
    """Assign ``proposals`` [K, 4] to the gts, optionally prepend the gts, and sample."""
    proposals = proposals[:, :4].detach()
    gt_boxes = gt_boxes.to(proposals)
    gt_labels = gt_labels.to(device=proposals.device, dtype=torch.long)
    result = assigner.assign(proposals, gt_boxes, gt_labels)
    num_gts = gt_boxes.shape[0]
    candidates = proposals
    is_gt = torch.zeros(proposals.shape[0], dtype=torch.bool, device=proposals.device)
    if add_gt_as_proposals and num_gts > 0:
        device = proposals.device
        labels = result.labels if result.labels is not None else torch.full_like(result.gt_inds, -1)
        result = AssignResult(
            gt_inds=torch.cat([torch.arange(1, num_gts + 1, device=device), result.gt_inds]),
            max_overlaps=torch.cat([result.max_overlaps.new_ones(num_gts), result.max_overlaps]),
            num_gts=num_gts,
            labels=torch.cat([gt_labels, labels]),
        )
        candidates = torch.cat([gt_boxes, proposals], dim=0)
        is_gt = torch.cat([torch.ones(num_gts, dtype=torch.bool, device=device), is_gt])
    pos_inds, neg_inds = sampler.sample(result)
    pos_gt_inds = result.gt_inds[pos_inds] - 1
    labels = torch.cat([gt_labels[pos_gt_inds], torch.full_like(neg_inds, num_classes)])
    return SampledRoIs(
        boxes=torch.cat([candidates[pos_inds], candidates[neg_inds]], dim=0),
        labels=labels,
        num_pos=int(pos_inds.numel()),
        pos_gt_inds=pos_gt_inds,
        pos_is_gt=is_gt[pos_inds],
        pos_gt_boxes=gt_boxes[pos_gt_inds],
    )


def stage_samplers(
    stage: RoIStageConfig, num_samples: int, pos_fraction: float
) -> tuple[MaxIoUAssigner, RandomSampler]:
    """The assigner and sampler a stage config asks for."""
    assigner = MaxIoUAssigner(
        stage.pos_iou, stage.neg_iou, stage.min_pos_iou, match_low_quality=stage.match_low_quality
    )
    return assigner, RandomSampler(num_samples, pos_fraction)


def bbox_losses(
    cls_score: Tensor,
    deltas: Tensor,
    samples: list[SampledRoIs],
    coder: DeltaXYWHBBoxCoder,
    num_classes: int,
    stage: RoIStageConfig,
) -> dict[str, Tensor]:
    """Softmax CE over all sampled RoIs; L1 / smooth L1 on positives divided by the sampled count.

    ``cls_score`` / ``deltas`` are the head outputs for ``samples``' boxes concatenated in order.
    """
    labels = torch.cat([s.labels for s in samples])
    num = labels.numel()
    cls_score = cls_score.float()
    if num == 0:
        zero = cls_score.sum() * 0 + deltas.sum() * 0
        return {"loss_cls": zero, "loss_bbox": zero.clone()}
    loss_cls = F.cross_entropy(cls_score, labels, reduction="sum") / num
    pos = labels < num_classes
    targets = torch.cat([coder.encode(s.pos_boxes, s.pos_gt_boxes) for s in samples])
    pred = select_deltas(deltas[pos].float(), labels[pos])
    if stage.loss_bbox == "smooth_l1":
        loss_bbox = smooth_l1_loss(pred, targets, stage.smooth_l1_beta, avg_factor=num)
    else:
        loss_bbox = l1_loss(pred, targets, avg_factor=num)
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}


def mask_targets(gt_masks: Tensor, boxes: Tensor, gt_inds: Tensor, size: int) -> Tensor:
    """Binary targets [P, size, size]: each gt bitmap cropped by its positive box with aligned RoIAlign, >= 0.5."""
    if gt_masks.dim() != 3:
        raise ValueError(f"mask_targets: gt masks must be [N, h, w], got {tuple(gt_masks.shape)}")
    if boxes.shape[0] == 0:
        return gt_masks.new_zeros((0, size, size), dtype=torch.float32)
    # The original clips the boxes to the mask bitmap first (mmdet ``mask_target_single``).
    h, w = gt_masks.shape[-2:]
    boxes = boxes.float()
    x = boxes[:, 0::2].clamp(min=0, max=w)
    y = boxes[:, 1::2].clamp(min=0, max=h)
    boxes = torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)
    rois = torch.cat([gt_inds.to(boxes)[:, None], boxes], dim=1)
    maps = gt_masks.to(device=boxes.device, dtype=torch.float32)[:, None]
    crops = roi_align(maps, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return (crops[:, 0] >= 0.5).float()


def mask_loss(mask_logits: Tensor, targets: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE-with-logits on each RoI's gt-class channel (zero when there are no positives)."""
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0
    k = mask_logits.shape[0]
    chosen = mask_logits[torch.arange(k, device=mask_logits.device), labels]
    return F.binary_cross_entropy_with_logits(chosen.float(), targets, reduction="mean")


def mask_branch_loss(
    mask_head: nn.Module,
    extractor: RoIExtractor,
    feats: Sequence[Tensor],
    samples: list[SampledRoIs],
    targets: Sequence[Targets],
    mask_size: int,
) -> Tensor:
    """Mask loss of one stage: the mask head on the positives, targets from their assigned gts."""
    pos_rois = boxes_to_rois([s.pos_boxes for s in samples])
    logits = mask_head(extractor(feats, pos_rois))
    # The heads' input checks reject targets without masks when there is a mask branch.
    goal = torch.cat(
        [mask_targets(cast(Tensor, t.masks), s.pos_boxes, s.pos_gt_inds, mask_size) for s, t in zip(samples, targets)]
    )
    labels = torch.cat([s.pos_labels for s in samples])
    return mask_loss(logits, goal.to(logits.device), labels)
