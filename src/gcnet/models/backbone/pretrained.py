"""ImageNet initialisation of the backbone, strict about every key.

Sources the original uses (``init_cfg=Pretrained(...)``):
- ``torchvision://resnet50`` / ``torchvision://resnet101`` (any torchvision ResNet/ResNeXt name
  works): torchvision's IMAGENET1K_V1 file. Keys are already ours (``conv1``, ``bn1``,
  ``layerX.Y.convZ/bnZ``, ``layerX.0.downsample.{0,1}``); ``fc.*`` is dropped.
- ``open-mmlab://resnext101_32x4d``: ``resnext101_32x4d-a5af3160.pth``, in the mmdet/torchvision
  layout (the original loads it into the same ``ResNeXt`` module names with no mapping; its logs
  report only ``fc.*`` as unexpected). Could not be checked against the real file offline, so the
  loader also accepts the usual wrappings: a ``{"state_dict": ...}`` dict, ``module.`` prefixes
  (DataParallel) and ``backbone.`` prefixes (mmcls / detector files, other prefixes dropped).

Mapping: after unwrapping, file key ``K`` -> backbone key ``K``; nothing is renamed.
Strictness: unknown keys, missing keys and shape mismatches raise :class:`PretrainedLoadError`
listing them. The only keys allowed to be absent are those ImageNet files never contain: GC
blocks (``*.context_block.*``), DCN offsets (``*.conv_offset.*``) and ``num_batches_tracked``
(absent from pre-0.4.1 files such as torchvision's ResNets); they keep their current values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Union

import torch
from torch import Tensor, nn

from gcnet.checkpoint.remote import PRETRAINED_URLS

Source = Union[str, os.PathLike, Mapping[str, Tensor]]
Layout = Literal["auto", "torchvision", "mmdet"]

# The open-mmlab:// names, from the one table of named weights in gcnet.checkpoint.
OPENMMLAB_URLS = {
    name[len("open-mmlab://"):]: url for name, url in PRETRAINED_URLS.items() if name.startswith("open-mmlab://")
}
_HEAD_PREFIXES = ("fc.",)
_OPTIONAL_PARTS = (".context_block.", ".conv_offset.")


class PretrainedLoadError(RuntimeError):
    """The ImageNet weights do not fit the backbone; the message lists every offending key."""


def resolve_url(source: str) -> str:
    """URL behind ``torchvision://<name>`` or ``open-mmlab://<name>``."""
    scheme, _, name = source.partition("://")
    if scheme == "torchvision":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(name)
        except (ValueError, KeyError) as err:
            raise ValueError(f"load_imagenet_weights: unknown torchvision model {name!r} in {source!r}") from err
        return weights["IMAGENET1K_V1"].url
    if scheme == "open-mmlab":
        if name not in OPENMMLAB_URLS:
            raise ValueError(
                f"load_imagenet_weights: unknown open-mmlab model {name!r}; known: {sorted(OPENMMLAB_URLS)}"
            )
        return OPENMMLAB_URLS[name]
    raise ValueError(f"load_imagenet_weights: unsupported source scheme in {source!r}")


def _fetch(url: str) -> Path:
    """Local file for ``url``: torch hub's checkpoint cache, else ``gcnet.checkpoint.download``."""
    cache_dir = Path(torch.hub.get_dir()) / "checkpoints"
    cached = cache_dir / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    try:  # looked up at call time, so a stripped-down install (or a test) can go without it
        from gcnet.checkpoint import download
    except ImportError:
        raise FileNotFoundError(
            f"ImageNet weights {url} are not in the cache and no downloader is available: "
            f"download the file yourself and put it at {cached} (or pass its path)"
        ) from None
    return Path(download(url, cache_dir=str(cache_dir)))


def _read(source: Source) -> Mapping[str, Tensor]:
    if isinstance(source, Mapping):
        return source
    text = os.fspath(source)
    path = _fetch(resolve_url(text)) if "://" in text else Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"load_imagenet_weights: no such file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors differ between torch versions
        raise PretrainedLoadError(f"could not read ImageNet weights from {path}: {err}") from err


def _normalise(raw: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Unwrap and strip prefixes (mmdet layout), then drop the classifier."""
    state: Mapping[str, object] = raw
    if layout in ("auto", "mmdet"):
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]  # type: ignore[assignment]
                break
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        if any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise PretrainedLoadError(
            f"ImageNet weights: entries that are not tensors (wrong layout={layout!r}?): {not_tensors[:10]}"
        )
    return {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}  # type: ignore[misc]


def load_imagenet_weights(backbone: nn.Module, source: Source, layout: Layout = "auto") -> list[str]:
    """Copy ImageNet weights into ``backbone`` (a :class:`ResNet`); return the keys left as they were.

    ``source``: a ``.pth`` path, a state dict, ``"torchvision://resnet50"`` or
    ``"open-mmlab://resnext101_32x4d"``. ``layout``: ``"torchvision"`` takes the dict as is;
    ``"mmdet"`` and ``"auto"`` also unwrap ``state_dict`` and strip ``module.``/``backbone.``.
    """
    if layout not in ("auto", "torchvision", "mmdet"):
        raise ValueError(f"load_imagenet_weights: unknown layout {layout!r}")
    weights = _normalise(_read(source), layout)
    own = backbone.state_dict()
    unexpected = sorted(set(weights) - set(own))
    absent = sorted(set(own) - set(weights))
    optional = [k for k in absent if any(p in f".{k}" for p in _OPTIONAL_PARTS) or k.endswith("num_batches_tracked")]
    missing = sorted(set(absent) - set(optional))
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in weights.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {unexpected}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {missing}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {mismatched}")
    if problems:
        name = source if not isinstance(source, Mapping) else "<state dict>"
        raise PretrainedLoadError(f"ImageNet weights {name} do not fit the backbone: " + "; ".join(problems))
    merged = dict(own)
    merged.update(weights)
    backbone.load_state_dict(merged, strict=True)
    return optional
