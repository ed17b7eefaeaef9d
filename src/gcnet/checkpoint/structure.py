"""What a state dict says about its ResNet/ResNeXt backbone, to refuse a mismatched checkpoint early.

The original once built its X-101 DCN cascades on R-50 by mistake; loading such weights into the
wrong backbone fails with hundreds of key errors, so we name both structures plainly instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from gcnet.checkpoint.io import CheckpointError

_DEPTHS: dict[tuple[bool, tuple[int, ...]], int] = {
    (True, (3, 4, 6, 3)): 50,
    (True, (3, 4, 23, 3)): 101,
    (True, (3, 8, 36, 3)): 152,
    (False, (2, 2, 2, 2)): 18,
    (False, (3, 4, 6, 3)): 34,
}
_ANCHOR = "layer1.0.conv1.weight"


@dataclass(frozen=True)
class BackboneStructure:
    """What a state dict says about its ResNet/ResNeXt: blocks, widths, groups, DCN and GC stages."""

    blocks: tuple[int, ...]
    bottleneck: bool
    widths: tuple[int, ...]  # conv2 channels of each stage
    groups: int
    dcn: tuple[bool, ...]
    gc: tuple[tuple[int, int] | None, ...]  # (planes, channels) of each stage's GC block

    def describe(self) -> str:
        """E.g. ``ResNeXt-101 32x4d with DCN in c3,c4,c5 with GC r16 in c3,c4,c5``."""
        depth = _DEPTHS.get((self.bottleneck, self.blocks))
        depth_text = str(depth) if depth is not None else "?"
        if self.groups > 1:
            text = f"ResNeXt-{depth_text} {self.groups}x{self.widths[0] // self.groups}d"
        else:
            text = f"ResNet-{depth_text}"
        dcn = [f"c{i + 2}" for i, on in enumerate(self.dcn) if on]
        if dcn:
            text += f" with DCN in {','.join(dcn)}"
        gc = [(f"c{i + 2}", g) for i, g in enumerate(self.gc) if g is not None]
        if gc:
            ratios = sorted({round(c / max(p, 1)) for _, (p, c) in gc})
            text += f" with GC {'/'.join(f'r{r}' for r in ratios)} in {','.join(s for s, _ in gc)}"
        return text

    def blocks_text(self) -> str:
        return "(" + ",".join(map(str, self.blocks)) + " blocks)"


def backbone_structure(state_dict: Mapping[str, Tensor]) -> BackboneStructure | None:
    """Read the backbone's structure from key names and shapes (None if there is no ResNet)."""
    anchor = next((k for k in state_dict if k.endswith(_ANCHOR) and k[: -len(_ANCHOR)] in ("", "backbone.")), None)
    if anchor is None:
        return None
    pre = anchor[: -len(_ANCHOR)]
    blocks, widths, dcn, gc = [], [], [], []
    groups = 1
    bottleneck = f"{pre}layer1.0.conv3.weight" in state_dict
    for stage in range(1, 5):
        n = 0
        while f"{pre}layer{stage}.{n}.conv1.weight" in state_dict:
            n += 1
        if n == 0:
            break
        blocks.append(n)
        conv2 = state_dict.get(f"{pre}layer{stage}.0.conv2.weight")
        if conv2 is not None and conv2.dim() == 4:
            widths.append(int(conv2.shape[0]))
            groups = max(groups, int(conv2.shape[0]) // max(int(conv2.shape[1]), 1))
        stage_pre = f"{pre}layer{stage}."
        dcn.append(
            any(k.startswith(stage_pre) and (".conv2.conv_offset." in k or ".conv2_offset." in k) for k in state_dict)
        )  # the current layout or mmcv's legacy one
        gc_w = state_dict.get(f"{pre}layer{stage}.0.context_block.channel_add_conv.0.weight")
        gc.append(None if gc_w is None else (int(gc_w.shape[0]), int(gc_w.shape[1])))
    return BackboneStructure(tuple(blocks), bottleneck, tuple(widths), groups, tuple(dcn), tuple(gc))


def check_backbone(own: Mapping[str, Tensor], ckpt: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` when both hold a ResNet and the two structures differ."""
    mine, theirs = backbone_structure(own), backbone_structure(ckpt)
    if mine is None or theirs is None or mine == theirs:
        return
    raise CheckpointError(
        f"{source}: checkpoint has a {theirs.describe()} backbone {theirs.blocks_text()} but the "
        f"config builds a {mine.describe()} backbone {mine.blocks_text()}; pick the config that "
        "matches this checkpoint (gcnet.zoo lists each published file with its config)"
    )
