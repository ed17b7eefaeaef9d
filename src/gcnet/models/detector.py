"""The two-stage detector: backbone -> FPN -> RPN -> RoI heads, in that visible order.

Child names (``backbone``, ``neck``, ``rpn_head``, ``roi_head``) are the original's, so a published
mmdetection checkpoint's ``state_dict`` loads with no renaming.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gcnet.models.backbone import ResNet, load_imagenet_weights
from gcnet.models.config import COCO_CLASSES, ModelConfig
from gcnet.models.neck import FPN
from gcnet.models.roi import CascadeRoIHead, StandardRoIHead
from gcnet.models.rpn import RPNHead, RPNLoss, RPNProposals
from gcnet.models.tta import flip_tta
from gcnet.structures import Detections, ImageMeta, Targets, category_ids_for

DetectorOutput = dict[str, Tensor] | list[Detections]


class TwoStageDetector(nn.Module):
    """Mask R-CNN (one RoI stage) or Cascade Mask R-CNN (three), chosen by ``cfg.roi.stages``."""

    def __init__(
        self, cfg: ModelConfig, class_names: tuple[str, ...] = COCO_CLASSES, category_ids: Sequence[int] = ()
    ) -> None:
        super().__init__()
        if len(class_names) != cfg.roi.num_classes:
            raise ValueError(f"{len(class_names)} class names given for a head with {cfg.roi.num_classes} classes")
        self.cfg = cfg
        self.class_names = tuple(class_names)
        if category_ids and len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids given for {len(class_names)} class names")
        # what results files call each class: the training set's ids (travel with the weights, as the names)
        self.category_ids = tuple(int(c) for c in category_ids) or tuple(category_ids_for(class_names))
        self.backbone = ResNet(cfg.backbone)
        self.neck = FPN(cfg.neck)
        self.rpn_head = RPNHead(cfg.rpn)
        self.rpn_proposals = RPNProposals(cfg.rpn)  # no parameters: not in the state_dict
        self.rpn_loss = RPNLoss(cfg.rpn)
        head_type = CascadeRoIHead if cfg.roi.cascade else StandardRoIHead
        self.roi_head = head_type(cfg.roi, with_mask=cfg.with_mask)

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """Backbone c2..c5 -> FPN p2..p6."""
        return self.neck(self.backbone(images))

    def forward(
        self,
        images: Tensor,
        metas: list[ImageMeta],
        targets: list[Targets] | None = None,
    ) -> DetectorOutput:
        """Losses when ``targets`` are given, else per-image detections in original-image pixels.

        ``images`` is the normalised batch padded to a multiple of 32; ``metas`` say where each
        image lies in it (``img_shape``) and how it maps back to the original (``scale_factor``).
        """
        if len(metas) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images in the batch but {len(metas)} metas")
        if targets is None:
            if self.cfg.test_flip:
                roi = self.cfg.roi
                return flip_tta(self.predict, images, metas, roi.nms_iou, roi.class_agnostic_nms, roi.max_per_img)
            return self.predict(images, metas)
        feats = self.extract_features(images)
        rpn_logits, rpn_deltas = self.rpn_head(feats)
        proposals = self.rpn_proposals(rpn_logits, rpn_deltas, metas, training=self.training)
        rpn_losses = self.rpn_loss(rpn_logits, rpn_deltas, metas, targets)
        roi_losses = self.roi_head(feats, proposals, metas, targets)
        return {**rpn_losses, **roi_losses}

    def predict(self, images: Tensor, metas: list[ImageMeta]) -> list[Detections]:
        """Detections of one view of the batch (no test-time augmentation)."""
        feats = self.extract_features(images)
        rpn_logits, rpn_deltas = self.rpn_head(feats)
        proposals = self.rpn_proposals(rpn_logits, rpn_deltas, metas, training=self.training)
        detections = self.roi_head(feats, proposals, metas)
        return [_named(d, self.class_names) for d in detections]


def _named(detections: Detections, class_names: tuple[str, ...]) -> Detections:
    detections.class_names = class_names
    return detections


def total_loss(losses: dict[str, Tensor]) -> Tensor:
    """Sum of every loss term of a detector's loss dict."""
    return torch.stack([value for key, value in losses.items() if "loss" in key]).sum()


def build_model(
    cfg: ModelConfig,
    class_names: tuple[str, ...] = COCO_CLASSES,
    load_pretrained: bool = False,
    category_ids: Sequence[int] = (),
) -> TwoStageDetector:
    """Build the detector for ``cfg``; with ``load_pretrained`` the backbone starts from the ImageNet
    weights named by ``cfg.backbone.pretrained`` (as the original starts training)."""
    model = TwoStageDetector(cfg, class_names, category_ids)
    if load_pretrained and cfg.backbone.pretrained:
        load_imagenet_weights(model.backbone, cfg.backbone.pretrained)
    return model
