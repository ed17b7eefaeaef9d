"""The one way from "what the user named" to a model: every command, the demo, bench and export use it.

A *source* is a zoo config name (3.x or 2.x spelling), ``gcnet-demo``, a :class:`~gcnet.config.Config`,
or one of our checkpoint files (which record their config and class names). A *checkpoint* is a
path, an http(s) URL, a ``torchvision://``-style name, a zoo config name, or ``"zoo"`` for the
source's published file. What a checkpoint records wins over a named config (the weights were
trained with it); explicit ``--set`` overrides win over both; any difference from the recorded
config is said once, in one line. Anchors: detectron2's one checkpointer, torchvision's weights meta.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from gcnet.checkpoint import (
    CheckpointError,
    download,
    load_state_dict_checked,
    read_checkpoint,
    recorded_class_names,
)
from gcnet.config import Config, ConfigError, apply_overrides, config_diff, config_from_dict, with_class_names
from gcnet.errors import UserError
from gcnet.models.detector import TwoStageDetector, build_model
from gcnet.speed import prepare_for_inference
from gcnet.zoo import DEMO_NAME, UnknownModelError, get_config, get_entry

Source = str | os.PathLike | Config
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


@dataclass(frozen=True)
class BuiltDetector:
    """A model with the config it was built from (its ``data`` settings are its test pipeline)."""

    model: TwoStageDetector
    config: Config
    checkpoint: Path | None  # the local file the weights came from (None: fresh weights)


def _is_url(text: str) -> bool:
    return bool(_URL.match(text))


def _named_config(name: str) -> Config:
    """A zoo entry's config or the demo's; unknown names list the closest ones."""
    try:
        return get_config(name)
    except UnknownModelError as err:
        raise UserError(str(err)) from None


def _looks_like_file(text: str) -> bool:
    """A source that names a checkpoint rather than a config (``configs/gcnet/x.py`` is a config)."""
    return text.endswith((".pth", ".pt", ".ckpt")) or Path(text).is_file()


def check_source(source: Source) -> None:
    """Fail at once, before any slow work, on a source that names no config and no file."""
    if not isinstance(source, Config):
        text = os.fspath(source)
        if not (_is_url(text) or _looks_like_file(text)):
            _named_config(text)


def locate_checkpoint(checkpoint: str | os.PathLike, config_name: str | None = None) -> Path:
    """The local file behind a checkpoint argument: ``"zoo"`` (the published file of
    ``config_name``), a zoo config name, a URL or scheme name (downloaded once, sha256-checked,
    cached) or a path (which must exist)."""
    text = os.fspath(checkpoint)
    if text == "zoo":
        if config_name is None or config_name == DEMO_NAME:
            raise UserError(
                "--checkpoint zoo needs a zoo config name (see `gcnet zoo`); "
                f"{config_name or 'this config'} has no published file"
            )
        return download(get_entry(config_name).url)
    if _is_url(text):
        return download(text)
    path = Path(text)
    if path.is_file():
        return path
    try:
        return download(get_entry(text).url)
    except UnknownModelError:
        raise UserError(f"{path}: checkpoint file not found") from None


def _recorded(meta: dict[str, Any], path: Path) -> tuple[Config | None, tuple[str, ...] | None]:
    """(config, class names) a checkpoint records: ours write both; the original's files record
    ``CLASSES`` and a config as Python text (not ours to parse: its zoo config is used)."""
    recorded = meta.get("config")
    config = None
    if isinstance(recorded, dict):
        try:
            config = config_from_dict(recorded)
        except ConfigError as err:
            raise CheckpointError(f"{path}: its recorded config is not valid here: {err}") from None
    return config, recorded_class_names(meta)


_DATA_PATHS = ("data.train_ann", "data.train_images", "data.val_ann", "data.val_images")


def _model_and_test_diff(a: Config, b: Config) -> list[str]:
    """What differs between two configs in the model, the classes and the data pipeline (the
    dataset paths and training schedule do not change what a model predicts)."""
    return [
        d
        for d in config_diff(a, b)
        if d.startswith(("model.", "data.", "class_names")) and not d.startswith(_DATA_PATHS)
    ]


def _say(message: str) -> None:
    print(f"gcnet: {message}", file=sys.stderr)


def resolve(
    source: Source,
    checkpoint: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
) -> tuple[Config, Path | None, dict[str, Tensor] | None]:
    """(config, local checkpoint file or None, its state dict or None) for a source and checkpoint."""
    named: Config | None = None
    config_name: str | None = None
    if isinstance(source, Config):
        named, config_name = source, source.name
    else:
        text = os.fspath(source)
        if checkpoint is None and (_is_url(text) or _looks_like_file(text)):
            checkpoint = text  # the checkpoint file is the source: it records its config
        else:
            named, config_name = _named_config(text), text
    path = locate_checkpoint(checkpoint, config_name) if checkpoint is not None else None
    state_dict = None
    cfg = named
    if path is not None:
        state_dict, meta = read_checkpoint(path, mmap=True)  # tensors read when loaded, if at all
        recorded, names = _recorded(meta, path)
        if recorded is not None:
            if named is not None and (diff := _model_and_test_diff(named, recorded)):
                _say(f"{path} records its own config; using it, not {config_name}'s (differs in {', '.join(diff)})")
            cfg = recorded
        elif cfg is None:
            raise UserError(
                f"{path}: records no config (a published mmdetection file?); name its zoo "
                "config too, e.g. `gcnet test <zoo name> --checkpoint FILE`"
            )
        if names and names != cfg.class_names:
            cfg = with_class_names(cfg, names)
    assert cfg is not None
    if overrides:
        before = cfg
        try:
            cfg = apply_overrides(cfg, list(overrides))
        except ConfigError as err:
            raise UserError(str(err)) from None
        if path is not None and (diff := _model_and_test_diff(before, cfg)):
            _say(f"overrides change the checkpoint's config: {', '.join(diff)}")
    return cfg, path, state_dict


def build(
    source: Source,
    checkpoint: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
    fast: bool = False,
    load_pretrained: bool = False,
) -> BuiltDetector:
    """The model, its config and its checkpoint file (see the module docstring for what is accepted).

    ``fast`` returns :func:`gcnet.speed.prepare_for_inference`'s inference mode; ``load_pretrained``
    starts a fresh model's backbone from its ImageNet weights (ignored when a checkpoint is given).
    """
    cfg, path, state_dict = resolve(source, checkpoint, overrides)
    model = build_model(
        cfg.model, cfg.class_names, load_pretrained=load_pretrained and path is None, category_ids=cfg.category_ids
    )
    if path is not None:
        assert state_dict is not None
        load_state_dict_checked(model, state_dict, str(path))
    if device is not None:
        model = model.to(device)
    model = model.eval()
    if fast:
        model = cast(TwoStageDetector, prepare_for_inference(model))  # a tuned copy of the same class
    return BuiltDetector(model, cfg, path)


def build_detector(
    source: Source,
    checkpoint: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    device: str | torch.device | None = None,
    fast: bool = False,
) -> TwoStageDetector:
    """The detector named by ``source`` (zoo name, ``gcnet-demo``, Config or our checkpoint file),
    with ``checkpoint``'s weights (path, URL, zoo name, or ``"zoo"``), in eval mode.

    ``fast`` returns the inference-only mode of :func:`gcnet.speed.prepare_for_inference` (folded BN,
    channels-last, the fastest CPU conv kernels): same detections up to float rounding, ~0.63x the
    eager CPU time; train the plain model."""
    return build(source, checkpoint, overrides=overrides, device=device, fast=fast).model


def default_device(device: str | torch.device | None = None) -> torch.device:
    """The device asked for, else CUDA when there is one, else the CPU.

    A device that is no device name or is not available here is a one-line :class:`UserError`,
    raised before any work (torch says so only at the first tensor moved, as a traceback)."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device!r}: not a device name (cpu, cuda, cuda:N, mps)") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            reason = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UserError(f"device {device!r}: CUDA is not available ({reason}); use --device cpu")
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise UserError(f"device {device!r}: only {count} CUDA device(s) here (cuda:0 to cuda:{count - 1})")
    elif chosen.type != "cpu":
        modules = (getattr(torch.backends, chosen.type, None), getattr(torch, chosen.type, None))  # mps, xpu, ...
        checks: list[Any] = [
            m.is_available for m in modules if m is not None and callable(getattr(m, "is_available", None))
        ]
        if not checks or not checks[0]():
            raise UserError(f"device {device!r}: {chosen.type} is not available here; use --device cpu")
    return chosen
