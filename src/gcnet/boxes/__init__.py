"""Box utilities shared by the RPN and the RoI heads: anchors, coder, NMS, assignment, sampling, losses."""

from gcnet.boxes.anchors import AnchorGenerator, anchor_inside_flags
from gcnet.boxes.assigner import AssignResult, MaxIoUAssigner, iou_matrix
from gcnet.boxes.coder import DeltaXYWHBBoxCoder
from gcnet.boxes.losses import l1_loss, smooth_l1_loss
from gcnet.boxes.nms import batched_nms, box_iou
from gcnet.boxes.sampler import RandomSampler

__all__ = [
    "AnchorGenerator",
    "AssignResult",
    "DeltaXYWHBBoxCoder",
    "MaxIoUAssigner",
    "RandomSampler",
    "anchor_inside_flags",
    "batched_nms",
    "box_iou",
    "iou_matrix",
    "l1_loss",
    "smooth_l1_loss",
]
