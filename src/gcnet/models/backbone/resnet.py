"""ResNet / ResNeXt for detection, with GC blocks and deformable convs where the config asks.

Layout and key names are the original's (mmdet ``ResNet``/``ResNeXt``, style 'pytorch'):
``conv1``/``bn1`` stem, ``layer1..layer4`` of blocks with ``conv{1,2,3}``/``bn{1,2,3}``,
``downsample.{0,1}``, ``context_block.*`` (GC) and ``conv2.conv_offset.*`` (DCN).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from gcnet.layers import ContextBlock, DeformConv2dPack, FrozenBatchNorm2d, build_norm
from gcnet.models.config import BackboneConfig

ARCH_SETTINGS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _conv3x3(
    in_channels: int, out_channels: int, stride: int, groups: int, deformable: bool
) -> nn.Conv2d | DeformConv2dPack:
    """The block's 3x3 conv; DCN v1 keeps its ``weight`` key, so ImageNet weights still load."""
    if deformable:
        return DeformConv2dPack(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=False)


def _context_block(cfg: BackboneConfig, channels: int, enabled: bool) -> ContextBlock | None:
    if not enabled or cfg.gc_ratio is None:
        return None
    block = ContextBlock(channels, cfg.gc_ratio, cfg.gc_pooling, cfg.gc_fusions)
    block.fuse_inplace = True  # its input (the last norm's output) is read by nothing else
    return block


class _ResidualBlock(nn.Module):
    """What both blocks share: the constructor, and the forward's tail (optional GC block on the
    residual branch, + identity, ReLU). Subclasses build and run the branch's convs.

    The branch is built first, so state_dict keys come in the original's order (convs and norms,
    then ``downsample``, then ``context_block``).
    """

    expansion: int

    def __init__(
        self,
        cfg: BackboneConfig,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Sequential | None,
        with_gc: bool,
        with_dcn: bool,
    ) -> None:
        super().__init__()
        self._build_branch(cfg, inplanes, planes, stride, with_dcn)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.context_block = _context_block(cfg, planes * self.expansion, with_gc)

    def _build_branch(self, cfg: BackboneConfig, inplanes: int, planes: int, stride: int, with_dcn: bool) -> None:
        raise NotImplementedError

    def _branch(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self._branch(x)
        if self.context_block is not None:
            # GC block: after the last conv + norm, before the residual add (original: 'after_conv3').
            out = self.context_block(out)
        return self.relu(out + identity)


class BasicBlock(_ResidualBlock):
    """ResNet-18/34 block: 3x3 (stride) -> 3x3, then [GC] -> + identity -> ReLU.

    The original allows no plugins here; we place a GC block after conv2 -> bn2 (the last conv,
    the same role as after_conv3 in a bottleneck) and DCN on conv2.
    """

    expansion = 1

    def _build_branch(self, cfg: BackboneConfig, inplanes: int, planes: int, stride: int, with_dcn: bool) -> None:
        if cfg.groups != 1 or cfg.base_width != 64:
            raise ValueError(
                f"BackboneConfig: depth {cfg.depth} uses BasicBlock, which supports only groups=1 and "
                f"base_width=64 (got groups={cfg.groups}, base_width={cfg.base_width})"
            )
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = build_norm(cfg.norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, 1, with_dcn)
        self.bn2 = build_norm(cfg.norm, planes)

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(_ResidualBlock):
    """1x1 -> 3x3 (stride, grouped for ResNeXt, optionally DCN) -> 1x1 (x4), [GC], + identity, ReLU."""

    expansion = 4

    def _build_branch(self, cfg: BackboneConfig, inplanes: int, planes: int, stride: int, with_dcn: bool) -> None:
        # ResNeXt width rule of the original: floor(planes * base_width / base_channels) * groups.
        if cfg.groups == 1:
            width = planes
        else:
            width = (planes * cfg.base_width // cfg.base_channels) * cfg.groups
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = build_norm(cfg.norm, width)
        # style 'pytorch': the stride sits on the 3x3 conv.
        self.conv2 = _conv3x3(width, width, stride, cfg.groups, with_dcn)
        self.bn2 = build_norm(cfg.norm, width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = build_norm(cfg.norm, out_channels)

    def _branch(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """ResNet-18..152 and ResNeXt (``groups``/``base_width``) returning c2..c5 for ``out_indices``.

    ``train()`` re-applies the original's training conventions every time: the stem and
    ``layer1..layer{frozen_stages}`` get no gradients and stay in eval mode, and with
    ``norm_eval`` every BatchNorm keeps its running statistics (eval mode) while training.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg  # checked when built: depth, stage flags, out_indices, frozen_stages (BackboneConfig)
        kind, stage_blocks = ARCH_SETTINGS[cfg.depth]
        block: type[_ResidualBlock] = BasicBlock if kind == "basic" else Bottleneck
        self.frozen_stages = cfg.frozen_stages
        self.norm_eval = cfg.norm_eval
        self.out_indices = tuple(cfg.out_indices)

        stem = cfg.base_channels
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = build_norm(cfg.norm, stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        inplanes = stem
        stage_channels: list[int] = []
        for i, num_blocks in enumerate(stage_blocks):
            planes = cfg.base_channels * 2**i
            stride = 1 if i == 0 else 2
            layer = self._make_layer(block, inplanes, planes, num_blocks, stride, cfg.gc_stages[i], cfg.dcn_stages[i])
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            stage_channels.append(inplanes)
        self.out_channels: list[int] = [stage_channels[i] for i in self.out_indices]
        if cfg.pretrained is None and cfg.scratch_init == "original":
            self.init_from_scratch(cfg.zero_init_residual)
        self._freeze_stages()

    @torch.no_grad()
    def init_from_scratch(self, zero_init_residual: bool = True) -> None:
        """The original's initialisation of a backbone without ImageNet weights.

        Every ``nn.Conv2d`` (stem, branches, downsample, the GC blocks' convs, DCN offset convs)
        Kaiming-normal with fan_out and zero bias; norms weight 1, bias 0; DCN offsets back to zero;
        with ``zero_init_residual`` the last norm of each block (weight and bias) zero, so every
        residual branch, its GC block included, starts as zero and each block as the identity + ReLU.
        With ImageNet weights none of this runs (GC and DCN keep their construction init).
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, FrozenBatchNorm2d)):
                module.weight.fill_(1.0)
                module.bias.zero_()
        for module in self.modules():
            if isinstance(module, DeformConv2dPack):
                module.conv_offset.weight.zero_()
                assert module.conv_offset.bias is not None  # built with bias=True
                module.conv_offset.bias.zero_()
            if zero_init_residual and isinstance(module, _ResidualBlock):
                # A build_norm layer (a BatchNorm, possibly converted to SyncBN, or a frozen one).
                last = cast(
                    "nn.modules.batchnorm._BatchNorm | FrozenBatchNorm2d",
                    module.bn3 if isinstance(module, Bottleneck) else module.bn2,
                )
                last.weight.zero_()
                last.bias.zero_()

    def _make_layer(
        self,
        block: type[_ResidualBlock],
        inplanes: int,
        planes: int,
        num_blocks: int,
        stride: int,
        with_gc: bool,
        with_dcn: bool,
    ) -> nn.Sequential:
        out_channels = planes * block.expansion
        downsample = None
        if stride != 1 or inplanes != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(inplanes, out_channels, 1, stride=stride, bias=False),
                build_norm(self.cfg.norm, out_channels),
            )
        blocks = [block(self.cfg, inplanes, planes, stride, downsample, with_gc, with_dcn)]
        for _ in range(1, num_blocks):
            blocks.append(block(self.cfg, out_channels, planes, 1, None, with_gc, with_dcn))
        return nn.Sequential(*blocks)

    def frozen_modules(self) -> list[nn.Module]:
        """The stem (as conv1 + bn1) and the first ``frozen_stages`` layers."""
        if self.frozen_stages < 0:
            return []
        mods: list[nn.Module] = [self.conv1, self.bn1]
        mods += [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]
        return mods

    def _freeze_stages(self) -> None:
        for module in self.frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNet:
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ResNet expects a [N, 3, H, W] image batch, got {tuple(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs: list[Tensor] = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
            if i == self.out_indices[-1]:
                break
        return outs
