"""Data: image decoding, the original's pipeline, COCO datasets, batching and the shapes set."""

from gcnet.data.coco import CocoDetection, read_coco_json
from gcnet.data.collate import collate, stack_images
from gcnet.data.sampler import GroupedBatchSampler, ShardSampler, build_loader
from gcnet.data.synthetic import SHAPE_CLASSES, make_synthetic_coco
from gcnet.data.transforms import (
    hflip_boxes,
    hflip_image,
    hflip_masks,
    normalize,
    padded_size,
    preprocess,
    rescale_size,
    resize_keep_ratio,
    resize_masks,
    resize_to,
)
from gcnet.image_io import DatasetError, load_image

__all__ = [
    "CocoDetection",
    "DatasetError",
    "GroupedBatchSampler",
    "SHAPE_CLASSES",
    "ShardSampler",
    "build_loader",
    "collate",
    "hflip_boxes",
    "hflip_image",
    "hflip_masks",
    "load_image",
    "make_synthetic_coco",
    "normalize",
    "padded_size",
    "preprocess",
    "read_coco_json",
    "rescale_size",
    "resize_keep_ratio",
    "resize_masks",
    "resize_to",
    "stack_images",
]
