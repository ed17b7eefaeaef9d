"""Building blocks: the GC block, backbone norms and deformable convolution."""

from gcnet.layers.context_block import ContextBlock
from gcnet.layers.dcn import DeformConv2dPack
from gcnet.layers.norm import FrozenBatchNorm2d, build_norm

__all__ = ["ContextBlock", "DeformConv2dPack", "FrozenBatchNorm2d", "build_norm"]
