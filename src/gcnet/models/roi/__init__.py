"""RoI heads: multi-level RoIAlign, box and mask heads, Mask R-CNN and Cascade Mask R-CNN stages."""

from gcnet.models.roi.bbox_head import Shared2FCBBoxHead
from gcnet.models.roi.cascade import CascadeRoIHead, cascade_stages
from gcnet.models.roi.extractor import RoIExtractor, boxes_to_rois, map_roi_levels
from gcnet.models.roi.inference import multiclass_nms
from gcnet.models.roi.mask_head import FCNMaskHead
from gcnet.models.roi.standard import StandardRoIHead

__all__ = [
    "CascadeRoIHead",
    "FCNMaskHead",
    "RoIExtractor",
    "Shared2FCBBoxHead",
    "StandardRoIHead",
    "boxes_to_rois",
    "cascade_stages",
    "map_roi_levels",
    "multiclass_nms",
]
