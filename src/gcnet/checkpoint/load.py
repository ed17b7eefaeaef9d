"""Load a checkpoint into a model: strict key and shape checks, with every problem listed."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from gcnet.checkpoint.remote import download
from gcnet.checkpoint.io import (
    CheckpointError,
    PathLike,
    read_checkpoint,
    unwrap_model,
    upgrade_legacy_dcn_keys,
)
from gcnet.checkpoint.structure import check_backbone

_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _listing(title: str, items: list[str], limit: int = 40) -> str:
    if not items:
        return ""
    more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"\n  {title} ({len(items)}):\n    " + "\n    ".join(items[:limit]) + more


def _locate(path_or_url: PathLike) -> Path:
    """A local file: URLs and ``scheme://name`` aliases are downloaded (or cached). Zoo config
    names are not resolved here (core knows no zoo): the builder passes their URL."""
    text = os.fspath(path_or_url)
    if isinstance(text, str) and _URL_SCHEME.match(text):
        return download(text)
    return Path(text)


def recorded_class_names(meta: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The class names a checkpoint's ``meta`` records (our ``class_names`` or the original's
    ``CLASSES``), or None when it does not say."""
    names = meta.get("class_names") or meta.get("CLASSES")
    return tuple(str(n) for n in names) if names else None


def load_state_dict_checked(
    model: nn.Module, state_dict: Mapping[str, Tensor], source: str, strict: bool = True
) -> None:
    """Copy ``state_dict`` (as :func:`read_checkpoint` returns it) into ``model``: legacy DCN keys
    upgraded, the backbone's structure compared, keys and shapes checked (see :func:`load_checkpoint`).
    ``source`` names the file in every message."""
    target = unwrap_model(model)
    own = target.state_dict()
    state_dict = upgrade_legacy_dcn_keys(state_dict, own)
    check_backbone(own, state_dict, source)
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if shapes or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"{source}: checkpoint does not match the model"
            + _listing("missing keys (in the model, not in the file)", missing)
            + _listing("unexpected keys (in the file, not in the model)", unexpected)
            + _listing("shape mismatches", shapes)
        )
    target.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
    if missing or unexpected:
        warnings.warn(
            f"{source}: loaded non-strictly; {len(missing)} missing and {len(unexpected)} unexpected keys"
            + _listing("missing", missing, 10) + _listing("unexpected", unexpected, 10),
            stacklevel=3,
        )


def load_checkpoint(
    model: nn.Module, path_or_url: PathLike, strict: bool = True, map_location: Any = "cpu"
) -> dict:
    """Load weights into ``model`` from a path, an http(s) URL or a ``torchvision://``-style name;
    returns the checkpoint's ``meta``.

    Strict by default: any missing or unexpected key raises :class:`CheckpointError` listing them
    (missing ``num_batches_tracked`` counters are tolerated). Shape mismatches always raise.
    """
    path = _locate(path_or_url)
    state_dict, meta = read_checkpoint(path, map_location=map_location)
    load_state_dict_checked(model, state_dict, str(path), strict)
    return meta
