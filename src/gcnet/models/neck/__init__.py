"""Necks: the FPN."""

from gcnet.models.neck.fpn import FPN

__all__ = ["FPN"]
