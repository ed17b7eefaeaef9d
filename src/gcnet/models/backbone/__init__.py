"""Backbones: ResNet / ResNeXt with GC and DCN, and ImageNet weight loading."""

from gcnet.models.backbone.pretrained import load_imagenet_weights
from gcnet.models.backbone.resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "load_imagenet_weights"]
