"""ImageNet initialisation of the backbone, strict about every key.

Sources the original uses (``init_cfg=Pretrained(...)``):
- ``torchvision://resnet50`` / ``torchvision://resnet101`` (any torchvision ResNet/ResNeXt name
  works): torchvision's IMAGENET1K_V1 file, reused from torch hub's cache when it is there. Keys
  are already ours (``conv1``, ``bn1``, ``layerX.Y.convZ/bnZ``, ``layerX.0.downsample.{0,1}``);
  ``fc.*`` is dropped.
- ``open-mmlab://resnext101_32x4d``: ``resnext101_32x4d-a5af3160.pth``, in the mmdet/torchvision
  layout (the original loads it into the same ``ResNeXt`` module names with no mapping; its logs
  report only ``fc.*`` as unexpected). Could not be checked against the real file offline, so the
  loader also accepts the usual wrappings: a ``{"state_dict": ...}`` dict, ``module.`` prefixes
  (DataParallel) and ``backbone.`` prefixes (mmcls / detector files, other prefixes dropped).

Mapping: after unwrapping, file key ``K`` -> backbone key ``K``; nothing is renamed.
Fetching: names and URLs go through :func:`gcnet.checkpoint.download` (one cache, sha256 checked
against the file name) and files are read with ``weights_only=True``
(:func:`gcnet.checkpoint.io.safe_torch_load`), as every other checkpoint is.
Strictness: unknown keys, missing keys and shape mismatches raise :class:`PretrainedLoadError`
(a :class:`~gcnet.checkpoint.CheckpointError`) listing them. The only keys allowed to be absent
are those ImageNet files never contain: GC blocks (``*.context_block.*``), DCN offsets
(``*.conv_offset.*``) and ``num_batches_tracked`` (absent from pre-0.4.1 files such as
torchvision's ResNets); they keep their current values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from torch import Tensor, nn

from gcnet.checkpoint.io import CheckpointError, safe_torch_load
from gcnet.checkpoint.remote import download

Source = str | os.PathLike | Mapping[str, Tensor]
Layout = Literal["auto", "torchvision", "mmdet"]

_HEAD_PREFIXES = ("fc.",)
_OPTIONAL_PARTS = (".context_block.", ".conv_offset.")


class PretrainedLoadError(CheckpointError):
    """The ImageNet weights do not fit the backbone; the message lists every offending key."""


def _read(source: Source) -> Mapping[str, Tensor]:
    """The raw mapping of ``source``; names and URLs are fetched through the one download path."""
    if isinstance(source, Mapping):
        return source
    text = os.fspath(source)
    path = download(text) if "://" in text else text
    raw = safe_torch_load(path)
    if not isinstance(raw, Mapping):
        raise PretrainedLoadError(f"{path}: ImageNet weights file holds a {type(raw).__name__}, not a dict")
    return raw


def _normalise(raw: Mapping[str, Tensor], layout: Layout) -> dict[str, Tensor]:
    """Unwrap and strip prefixes (mmdet layout), then drop the classifier."""
    state: Mapping[str, object] = raw
    if layout in ("auto", "mmdet"):
        for wrapper in ("state_dict", "model"):
            if wrapper in state and isinstance(state[wrapper], Mapping):
                state = state[wrapper]  # type: ignore[assignment]
                break
        state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
        if any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, Tensor))
    if not_tensors:
        raise PretrainedLoadError(
            f"ImageNet weights: entries that are not tensors (wrong layout={layout!r}?): {not_tensors[:10]}"
        )
    return {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}  # type: ignore[misc]


def load_imagenet_weights(backbone: nn.Module, source: Source, layout: Layout = "auto") -> list[str]:
    """Copy ImageNet weights into ``backbone`` (a :class:`ResNet`); return the keys left as they were.

    ``source``: a ``.pth`` path, a state dict, an http(s) URL, ``"torchvision://resnet50"`` or
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
