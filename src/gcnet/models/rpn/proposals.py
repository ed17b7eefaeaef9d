"""The RPN's proposal selection: the original's test procedure (mmdet ``RPNHead._get_bboxes_single``).

One implementation serves training (train limits), inference and the exported detector's glue.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from gcnet.boxes import AnchorGenerator, DeltaXYWHBBoxCoder, batched_nms
from gcnet.models.config import RPNConfig
from gcnet.models.rpn.levels import flatten_levels, level_anchors
from gcnet.structures import ImageMeta


class RPNProposals:
    """Head maps -> per-image proposals [K, 5] (x1, y1, x2, y2, score), detached.

    Holds no parameters: the selection is data-dependent (top-k, NMS) and never differentiated.
    """

    def __init__(self, cfg: RPNConfig) -> None:
        self.cfg = cfg
        self.anchor_generator = AnchorGenerator(cfg.strides, cfg.scales, cfg.ratios)
        self.coder = DeltaXYWHBBoxCoder()  # means 0, stds 1 for the RPN

    @torch.no_grad()
    def __call__(
        self,
        logits: Sequence[Tensor],
        deltas: Sequence[Tensor],
        metas: Sequence[ImageMeta],
        *,
        training: bool,
    ) -> list[Tensor]:
        """``training`` picks the original's ``train_cfg.rpn_proposal`` limits, else ``test_cfg.rpn``."""
        _, anchors = level_anchors("RPNProposals", self.anchor_generator, logits, metas)
        flat_logits, flat_deltas = flatten_levels(logits, deltas)
        cfg = self.cfg
        if training:
            nms_pre, max_per_img = cfg.train_nms_pre, cfg.train_max_per_img
        else:
            nms_pre, max_per_img = cfg.test_nms_pre, cfg.test_max_per_img
        return [
            self.single(
                [c[i] for c in flat_logits],
                [r[i] for r in flat_deltas],
                anchors,
                meta.img_shape,
                nms_pre,
                max_per_img,
            )
            for i, meta in enumerate(metas)
        ]

    def single(
        self,
        logits_per_level: Sequence[Tensor],
        deltas_per_level: Sequence[Tensor],
        anchors_per_level: Sequence[Tensor],
        img_shape: tuple[int, int],
        nms_pre: int,
        max_per_img: int,
    ) -> Tensor:
        """One image: per-level top-k by score, decode clipped to ``img_shape``, drop boxes not
        wider and taller than ``min_bbox_size``, NMS with the levels as groups, keep the best."""
        scores_all, deltas_all, anchors_all, level_all = [], [], [], []
        for level, (logits, deltas, anchors) in enumerate(zip(logits_per_level, deltas_per_level, anchors_per_level)):
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
