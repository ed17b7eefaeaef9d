"""What proposal selection and the loss both need from the head's maps: checks, anchors, flat views."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from gcnet.boxes import AnchorGenerator
from gcnet.structures import ImageMeta


def level_anchors(
    where: str, generator: AnchorGenerator, logits: Sequence[Tensor], metas: Sequence[ImageMeta]
) -> tuple[list[tuple[int, int]], list[Tensor]]:
    """Check the maps against the strides and the metas; then each level's (H, W) and anchors."""
    if len(logits) != generator.num_levels:
        raise ValueError(
            f"{where}: got {len(logits)} levels of RPN maps, expected {generator.num_levels} "
            f"(strides {generator.strides})"
        )
    batch = int(logits[0].shape[0])
    if len(metas) != batch:
        raise ValueError(f"{where}: {len(metas)} metas for a batch of {batch} images")
    sizes = [(int(m.shape[-2]), int(m.shape[-1])) for m in logits]
    return sizes, generator.grid_anchors(sizes, device=logits[0].device)


def flatten_levels(logits: Sequence[Tensor], deltas: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Per level [N, A, H, W] -> [N, H*W*A] and [N, 4A, H, W] -> [N, H*W*A, 4].

    (N, A, H, W) -> (N, H, W, A) puts the flat index at (y*W + x)*A + a, the anchors' order.
    """
    num = int(logits[0].shape[0])
    flat_logits = [c.permute(0, 2, 3, 1).reshape(num, -1) for c in logits]
    flat_deltas = [r.permute(0, 2, 3, 1).reshape(num, -1, 4) for r in deltas]
    return flat_logits, flat_deltas
