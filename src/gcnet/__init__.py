"""gcnet: GCNet (Global Context blocks) Mask R-CNN and Cascade Mask R-CNN in plain PyTorch."""

__version__ = "0.1.0"
