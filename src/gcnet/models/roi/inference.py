"""Test-time post-processing shared by the Mask R-CNN and Cascade heads (mmdet 3.x order).

Per image: softmax scores and decoded, clipped boxes (resized-image coordinates) ->
``multiclass_nms`` (score > thr, class-wise NMS, top k) -> mask head on the kept boxes in resized
coordinates -> boxes divided by the scale factor -> masks kept as ``BoxMasks`` in ``ori_shape``
(pasted on demand). mmdet 2.x
instead rescaled before NMS; the two agree up to float rounding (spec section 6.3).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from gcnet.boxes import batched_nms
from gcnet.masks import BoxMasks
from gcnet.models.config import RoIConfig
from gcnet.models.postprocess import rescale_boxes
from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois
from gcnet.structures import Detections, ImageMeta

Kept = tuple[Tensor, Tensor, Tensor]  # boxes (resized coordinates), scores, labels of one image


def multiclass_nms(
    boxes: Tensor,
    scores: Tensor,
    score_thr: float,
    iou_thr: float,
    max_num: int,
    *,
    class_agnostic: bool = False,
    class_score_thr: Sequence[float] = (),
) -> tuple[Tensor, Tensor, Tensor]:
    """NMS over (RoI, class) pairs, class-wise by default (mmdet ``multiclass_nms``).

    ``boxes`` [K, C, 4] (class-specific) or [K, 1, 4] / [K, 4] (shared by all classes);
    ``scores`` [K, C + 1] probabilities with background last. Pairs are flattened RoI-major,
    kept when score > ``score_thr`` (strict), NMS'd per class and the best ``max_num`` returned
    as (boxes [n, 4], scores [n], labels [n]) sorted by descending score.

    ``class_agnostic``: one NMS over all pairs, so that any class suppresses any other (mmdet's
    ``nms=dict(class_agnostic=True)``). ``class_score_thr``: one threshold per class in place of
    ``score_thr``, applied where it is: before NMS. Greedy NMS decides each pair by higher-scoring
    pairs only, so with class-wise NMS this keeps the pairs a filter after NMS would keep, and the
    top ``max_num`` are taken among those; with ``class_agnostic`` a filtered-out pair no longer
    suppresses other classes' pairs (as with ``score_thr``).
    """
    num_classes = scores.shape[1] - 1
    k = scores.shape[0]
    if boxes.dim() == 2:
        boxes = boxes[:, None]
    if boxes.shape[1] == 1:
        boxes = boxes.expand(k, num_classes, 4)
    if boxes.shape != (k, num_classes, 4):
        raise ValueError(f"multiclass_nms: boxes {tuple(boxes.shape)} do not match scores {tuple(scores.shape)}")
    flat_boxes = boxes.reshape(-1, 4)
    flat_scores = scores[:, :num_classes].reshape(-1)
    flat_labels = torch.arange(num_classes, device=scores.device).repeat(k)
    if class_score_thr:
        if len(class_score_thr) != num_classes:
            raise ValueError(f"multiclass_nms: {len(class_score_thr)} class_score_thr for {num_classes} classes")
        thr = torch.tensor(class_score_thr, dtype=flat_scores.dtype, device=scores.device)[flat_labels]
        valid = (flat_scores > thr).nonzero().view(-1)
    else:
        valid = (flat_scores > score_thr).nonzero().view(-1)
    flat_boxes, flat_scores, flat_labels = flat_boxes[valid], flat_scores[valid], flat_labels[valid]
    if flat_boxes.shape[0] == 0:
        return flat_boxes, flat_scores, flat_labels
    groups = torch.zeros_like(flat_labels) if class_agnostic else flat_labels
    keep = batched_nms(flat_boxes, flat_scores, groups, iou_thr)
    if max_num > 0:
        keep = keep[:max_num]
    return flat_boxes[keep], flat_scores[keep], flat_labels[keep]


def configured_nms(boxes: Tensor, scores: Tensor, cfg: RoIConfig) -> Kept:
    """``multiclass_nms`` with ``cfg``'s test-time settings: the last box step of both RoI heads."""
    return multiclass_nms(
        boxes,
        scores,
        cfg.score_thr,
        cfg.nms_iou,
        cfg.max_per_img,
        class_agnostic=cfg.class_agnostic_nms,
        class_score_thr=cfg.class_score_thr,
    )


def to_detections(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    mask_probs: Tensor | None,
    meta: ImageMeta,
    mask_thr: float,
) -> Detections:
    """Resized-image results of one image -> ``Detections`` in the original image.

    ``mask_probs`` [n, 28, 28] are the label channel's probabilities (None: no masks); they stay
    compact in a ``BoxMasks`` that pastes into ``ori_shape`` when asked.
    """
    ori_boxes = rescale_boxes(boxes, meta.scale_factor)
    masks = None
    if mask_probs is not None:
        masks = BoxMasks(mask_probs, ori_boxes, meta.ori_shape, mask_thr)
    return Detections(boxes=ori_boxes, scores=scores.float(), labels=labels.long(), masks=masks)


def label_mask_probs(
    extractor: RoIExtractor,
    heads: Iterable[nn.Module],
    feats: Sequence[Tensor],
    kept: Sequence[Kept],
    mask_size: int,
) -> list[Tensor]:
    """Per image [n, mask_size, mask_size]: the mean over ``heads`` (Mask R-CNN's one, or the three
    Cascade stages') of the sigmoid of each kept box's label channel. Selecting the label channel
    before averaging gives the same numbers with num_classes times less memory."""
    rois = boxes_to_rois([b for b, _, _ in kept])
    if rois.shape[0] == 0:
        return [rois.new_zeros((0, mask_size, mask_size)) for _ in kept]
    labels = torch.cat([lab for _, _, lab in kept])
    mask_feats = extractor(feats, rois)
    rows = torch.arange(rois.shape[0], device=rois.device)
    probs = torch.stack([torch.sigmoid(head(mask_feats)[rows, labels].float()) for head in heads]).mean(dim=0)
    return list(probs.split([b.shape[0] for b, _, _ in kept]))


def detections_of_batch(
    kept: Sequence[Kept], mask_probs: Sequence[Tensor] | None, metas: Sequence[ImageMeta], mask_thr: float
) -> list[Detections]:
    """``to_detections`` for every image of the batch (``mask_probs`` None: box-only heads)."""
    probs = [None] * len(kept) if mask_probs is None else mask_probs
    return [to_detections(b, s, lab, m, meta, mask_thr) for (b, s, lab), m, meta in zip(kept, probs, metas)]
