"""Horizontal-flip test-time augmentation, merged as mmdetection 3.x merges it.

mmdet 3.x (``tools/test.py --tta`` without a ``tta_pipeline`` / ``tta_model`` in the config, and
``DetTTAModel``) runs two views of each image: the test pipeline's resized image flipped
(``RandomFlip(prob=1.)``, before padding, meta ``flip=True``) and not flipped (``prob=0.``), in that
order, each through the plain detector. ``DetTTAModel._merge_single_sample`` then maps the
flipped view's boxes (already in the original image) back with ``bbox_flip`` over ``ori_shape``
(x1' = W - x2, x2' = W - x1), concatenates boxes, scores and labels of both views (scores are not
averaged), runs mmcv's class-aware ``batched_nms`` with ``tta_cfg.nms`` (IoU 0.5 by default) and
keeps the best ``tta_cfg.max_per_img`` (100). It keeps boxes, scores and labels only: masks are
not merged (its results carry none).

Here the merge takes its NMS IoU, class-agnostic choice and ``max_per_img`` from the RoI head's
test settings (the defaults 0.5, class-wise and 100 are mmdet's ``tta_cfg`` defaults), and each
kept detection carries its own view's mask, mirrored back for the flipped view
(:meth:`gcnet.masks.BoxMasks.hflip`), so Mask R-CNN keeps its masks under TTA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from torch import Tensor

from gcnet.data.transforms import hflip_boxes, hflip_image
from gcnet.structures import Detections, ImageMeta
from gcnet.tiling import merge_detections

Predict = Callable[[Tensor, list[ImageMeta]], list[Detections]]


def flip_batch(images: Tensor, metas: Sequence[ImageMeta]) -> tuple[Tensor, list[ImageMeta]]:
    """The batch with each image's resized region (``img_shape``) mirrored and its padding left in
    place, as flipping before ``Pad`` gives; metas marked ``flip=True``."""
    flipped = images.clone()
    for i, meta in enumerate(metas):
        h, w = meta.img_shape
        flipped[i, :, :h, :w] = hflip_image(images[i, :, :h, :w])
    return flipped, [dataclasses.replace(m, flip=True) for m in metas]


def unflip(detections: Detections, width: int) -> Detections:
    """Detections of the mirrored image -> detections of the image itself (``width`` its width)."""
    masks = None if detections.masks is None else detections.masks.hflip()
    return dataclasses.replace(detections, boxes=hflip_boxes(detections.boxes, width), masks=masks)


def flip_tta(
    predict: Predict,
    images: Tensor,
    metas: Sequence[ImageMeta],
    iou_thr: float = 0.5,
    class_agnostic: bool = False,
    max_per_img: int = 100,
) -> list[Detections]:
    """``predict`` on the flipped and on the plain batch, merged per image (see the module doc)."""
    flipped_images, flipped_metas = flip_batch(images, metas)
    flipped = predict(flipped_images, flipped_metas)
    plain = predict(images, list(metas))
    return [
        merge_detections([unflip(f, meta.ori_shape[1]), p], iou_thr, class_agnostic, max_per_img)
        for f, p, meta in zip(flipped, plain, metas)
    ]
