"""Load a checkpoint into a model: strict key and shape checks, with every problem listed; or, to
fine-tune on other classes, every tensor that fits, with the class-dependent layers started afresh."""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from gcnet.checkpoint.io import (
    CheckpointError,
    PathLike,
    read_checkpoint,
    unwrap_model,
    upgrade_legacy_dcn_keys,
)
from gcnet.checkpoint.remote import download
from gcnet.checkpoint.structure import check_backbone

_URL_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")  # BN step counters: unused, absent from old files


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
    missing = [k for k in own if k not in state_dict and not _is_counter(k)]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
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
            + _listing("missing", missing, 10)
            + _listing("unexpected", unexpected, 10),
            stacklevel=3,
        )


def _module_names(keys: Sequence[str], limit: int = 8) -> str:
    """``a.b.weight, a.b.bias, c.weight`` -> ``a.b, c`` (at most ``limit``, then a count)."""
    names = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


@dataclass(frozen=True)
class FinetuneReport:
    """What :func:`load_for_finetuning` did, tensor by tensor name."""

    source: str
    loaded: int  # tensors copied from the file
    total: int  # tensors of the model (BN step counters aside)
    reinitialised: tuple[str, ...]  # class-dependent tensors started afresh
    absent: tuple[str, ...]  # the model's tensors the file does not hold: kept as built
    unused: tuple[str, ...]  # the file's tensors the model has no place for
    classes: str  # why the class-dependent layers were (not) loaded

    def summary(self) -> str:
        """One line: counts, then the re-initialised, absent and unused layers by module name."""
        parts = [f"{self.source}: loaded {self.loaded} of {self.total} tensors"]
        if self.reinitialised:
            parts.append(
                f"re-initialised {len(self.reinitialised)} ({self.classes}): {_module_names(self.reinitialised)}"
            )
        else:
            parts.append(f"class layers loaded ({self.classes})")
        if self.absent:
            parts.append(f"{len(self.absent)} absent from the file, kept as built: {_module_names(self.absent)}")
        if self.unused:
            parts.append(f"{len(self.unused)} in the file not used: {_module_names(self.unused)}")
        return "; ".join(parts)


def class_dependent_keys(model: nn.Module) -> list[str]:
    """State-dict keys of every layer whose shape or meaning follows the classes, found through
    the heads' own ``class_layers()`` (box classifier, class-specific regression, mask logits; in
    every cascade stage)."""
    keys: list[str] = []
    for prefix, module in unwrap_model(model).named_modules():
        layers = getattr(module, "class_layers", None)
        if callable(layers):
            for name, layer in layers().items():
                keys += [f"{prefix}.{name}.{k}" if prefix else f"{name}.{k}" for k in layer.state_dict()]
    return keys


def _reset_class_layers(model: nn.Module) -> None:
    for module in unwrap_model(model).modules():
        reset = getattr(module, "reset_class_layers", None)
        if callable(reset):
            reset()


def load_for_finetuning(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str,
    file_classes: Sequence[str] | None = None,
) -> FinetuneReport:
    """Start ``model`` from another model's weights (e.g. a COCO checkpoint, to train on own classes).

    Every tensor whose name and shape match is copied. The class-dependent layers are re-initialised
    as a fresh model's unless the file records the model's very class names (or records none and
    their shapes fit). A backbone of another structure is refused, as any other shape mismatch is
    (the config builds another network than the file's); keys only one side has are listed, not
    refused (a box-only model from a Mask R-CNN file, GC blocks added to a plain ResNet).
    """
    target = unwrap_model(model)
    own = target.state_dict()
    state_dict = upgrade_legacy_dcn_keys(state_dict, own)
    check_backbone(own, state_dict, source)
    class_keys = [k for k in class_dependent_keys(target) if k in own]
    names = tuple(getattr(target, "class_names", ()) or ())
    fits = all(k in state_dict and state_dict[k].shape == own[k].shape for k in class_keys)
    if file_classes is not None:
        same = tuple(file_classes) == names
        classes = (
            f"the file's {len(file_classes)} classes are this model's"
            if same
            else f"the file's {len(file_classes)} classes differ from this model's {len(names)}"
        )
    else:
        same = fits
        classes = "the file names no classes; " + ("the class layers fit" if fits else "the class layers do not fit")
    reinit = [] if same else class_keys
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and k not in reinit and v.shape != own[k].shape
    ]
    if shapes:
        raise CheckpointError(
            f"{source}: the config builds another network than the file's" + _listing("shape mismatches", shapes)
        )
    load = {k: v for k, v in state_dict.items() if k in own and k not in reinit}
    target.load_state_dict(load, strict=False)
    if reinit:
        _reset_class_layers(target)
    counted = [k for k in own if not _is_counter(k)]
    return FinetuneReport(
        source=source,
        loaded=sum(1 for k in load if not _is_counter(k)),
        total=len(counted),
        reinitialised=tuple(reinit),
        absent=tuple(k for k in counted if k not in state_dict),
        unused=tuple(k for k in state_dict if k not in own and not _is_counter(k)),
        classes=classes,
    )


def load_checkpoint(
    model: nn.Module,
    path_or_url: PathLike,
    strict: bool = True,
    map_location: Any = "cpu",
    *,
    finetune: bool = False,
) -> dict:
    """Load weights into ``model`` from a path, an http(s) URL or a ``torchvision://``-style name;
    returns the checkpoint's ``meta``.

    Strict by default: any missing or unexpected key raises :class:`CheckpointError` listing them
    (missing ``num_batches_tracked`` counters are tolerated). Shape mismatches always raise.
    ``finetune=True`` is :func:`load_for_finetuning` (``strict`` does not apply): what fits loads,
    the class layers start afresh when the file's classes differ, one summary line goes to stderr.
    """
    path = _locate(path_or_url)
    state_dict, meta = read_checkpoint(path, map_location=map_location)
    if finetune:
        report = load_for_finetuning(model, state_dict, str(path), recorded_class_names(meta))
        print(f"fine-tuning from {report.summary()}", file=sys.stderr)
    else:
        load_state_dict_checked(model, state_dict, str(path), strict)
    return meta
