"""One run's settings: the model and data settings of the core, the schedule, the class names.

One :class:`Config` per model, built in Python and composed with ``dataclasses.replace``;
``gcnet.zoo`` maps the original's config names to these. Command-line overrides are dotted
paths (``train.lr=0.01``, ``model.roi.stages.1.pos_iou=0.65``) applied by :func:`apply_overrides`;
checkpoints record a config as plain data (:func:`config_to_dict`, :func:`config_from_dict`).
Every object checks its fields when built, so each of these paths ends in the same checks.
The model's and the data's dataclasses live in the core (``gcnet.models.config``,
``gcnet.data.config``), which must not import this module; they are re-exported here.
Defaults are the original's Mask R-CNN R-50 FPN 1x COCO settings (see ``shared/spec``).
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar, cast

from gcnet.data.config import DataConfig
from gcnet.models.config import (
    AT_LEAST_1,
    COCO_CLASSES,
    NON_NEGATIVE,
    POSITIVE,
    UNIT,
    BackboneConfig,
    ConfigError,
    FPNConfig,
    ModelConfig,
    NormType,
    RoIConfig,
    RoIStageConfig,
    RPNConfig,
    cascade_stages,
    check_fields,
    config_error,
    conforms,
    field_types,
    is_union,
    join_path,
    type_text,
)

__all__ = [
    "AmpType",
    "BackboneConfig",
    "COCO_CLASSES",
    "COCO_STAT_NAMES",
    "Config",
    "ConfigError",
    "DataConfig",
    "FPNConfig",
    "ModelConfig",
    "NormType",
    "RPNConfig",
    "RoIConfig",
    "RoIStageConfig",
    "TrainConfig",
    "VAL_METRICS",
    "apply_overrides",
    "cascade_stages",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "with_class_names",
]

AmpType = Literal["bf16", "fp16"] | None
T = TypeVar("T")

# COCO's 12 summary numbers in COCOeval.stats order, as training logs name them (bbox_AP, segm_AP50...)
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
VAL_METRICS = tuple(f"{kind}_{name}" for kind in ("bbox", "segm") for name in COCO_STAT_NAMES)


@dataclass(frozen=True)
class TrainConfig:
    """The 1x schedule: SGD, linear warm-up, x0.1 at epochs 8 and 11, 12 epochs."""

    _home: ClassVar[str] = "train"

    lr: float = 0.02
    base_batch_size: int = 16  # lr is scaled by (real total batch / base_batch_size)
    scale_lr: bool = True  # the original's auto_scale_lr, which it leaves off by default
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    milestones: tuple[int, ...] = (8, 11)
    gamma: float = 0.1
    epochs: int = 12
    grad_accum: int = 1
    amp: AmpType = None
    grad_clip: float | None = None
    seed: int = 0
    log_interval: int = 50
    checkpoint_interval: int = 1
    eval_interval: int = 1
    # Also save work_dir/latest.pth every this many optimiser steps (0 = only at epoch ends).
    checkpoint_every_iters: int = 0
    # DDP's find_unused_parameters: only for models whose steps leave trainable parameters unused.
    find_unused_parameters: bool = False
    # How long a rank waits in a collective (and at start-up for the others) before it gives up on
    # a rank that died or hangs: exit code 75 (gloo) or NCCL's watchdog. Longer than any one-rank
    # pause: a checkpoint write, a download of load_from, rank 0's part of an evaluation.
    dist_timeout_s: float = 1800.0
    # Start from a trained model's weights (path, URL or zoo name; "zoo" = this config's published
    # file): tensors whose name and shape match load, the class-dependent layers start fresh.
    load_from: str | None = None
    # Keep work_dir/best.pth at the best value of this validation metric (None: no best.pth); only
    # when validation data is given. One of VAL_METRICS.
    save_best: str | None = "bbox_AP"
    # Stop after this many evaluations in a row without a better save_best metric (None: never).
    patience: int | None = None

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "lr": POSITIVE,
                "base_batch_size": AT_LEAST_1,
                "momentum": UNIT,
                "weight_decay": NON_NEGATIVE,
                "warmup_iters": NON_NEGATIVE,
                "warmup_ratio": UNIT,
                "milestones": AT_LEAST_1,
                "gamma": POSITIVE,
                "epochs": AT_LEAST_1,
                "grad_accum": AT_LEAST_1,
                "grad_clip": POSITIVE,
                "seed": NON_NEGATIVE,
                "log_interval": AT_LEAST_1,
                "checkpoint_interval": AT_LEAST_1,
                "eval_interval": AT_LEAST_1,
                "checkpoint_every_iters": NON_NEGATIVE,
                "dist_timeout_s": POSITIVE,
                "patience": AT_LEAST_1,
            },
        )
        if list(self.milestones) != sorted(set(self.milestones)):
            raise config_error(self, "milestones", f"expected increasing epochs, no repeats, got {self.milestones!r}")
        if self.save_best is not None and self.save_best not in VAL_METRICS:
            raise config_error(
                self, "save_best", f"expected None or a metric name ({', '.join(VAL_METRICS)}), got {self.save_best!r}"
            )
        if self.patience is not None and self.save_best is None:
            raise config_error(
                self,
                "patience",
                f"counts evaluations without a better train.save_best metric: "
                f"set save_best too, got patience={self.patience} with save_best=None",
            )
        if self.load_from == "":
            raise config_error(self, "load_from", "expected None or a path, URL or zoo name, got ''")


@dataclass(frozen=True)
class Config:
    """One model's complete settings; ``name`` is the original's config name for zoo models.

    ``model.roi.num_classes`` must be ``len(class_names)``: change both with
    :func:`with_class_names` (or ``--set class_names=...``, which does the same).
    """

    _home: ClassVar[str] = ""

    name: str = "mask-rcnn_r50_fpn_1x_coco"
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    class_names: tuple[str, ...] = field(default=COCO_CLASSES, repr=False)
    # the training set's category id of each class; () = COCO's ids for the 80 COCO classes, else 1..N
    category_ids: tuple[int, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        check_fields(self, {"category_ids": AT_LEAST_1}, non_empty=("class_names",))
        if self.category_ids and len(self.category_ids) != len(self.class_names):
            raise config_error(
                self,
                "category_ids",
                f"expected () or one id per class name ({len(self.class_names)}), got {len(self.category_ids)}",
            )
        if len(set(self.category_ids)) != len(self.category_ids):
            raise config_error(self, "category_ids", f"expected distinct ids, got {self.category_ids}")
        if self.model.roi.num_classes != len(self.class_names):
            raise config_error(
                self,
                "model.roi.num_classes",
                f"expected {len(self.class_names)}, one per class "
                f"name (it follows class_names: set those instead), got {self.model.roi.num_classes}",
            )
        if not self.model.with_mask and (self.train.save_best or "").startswith("segm_"):
            raise config_error(
                self,
                "train.save_best",
                f"a box-only model (model.with_mask=False) has bbox metrics only, got {self.train.save_best!r}",
            )


def with_class_names(cfg: Config, class_names: Sequence[str], category_ids: Sequence[int] = ()) -> Config:
    """``cfg`` for another set of classes: the names, their dataset ids (() = the default rule of
    :func:`gcnet.structures.category_ids_for`) and the heads' class count change together."""
    roi = dataclasses.replace(cfg.model.roi, num_classes=len(class_names))
    model = dataclasses.replace(cfg.model, roi=roi)
    return dataclasses.replace(cfg, class_names=tuple(class_names), category_ids=tuple(category_ids), model=model)


# --- plain data: checkpoints and overrides ----------------------------------------------------------


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """``cfg`` as plain data (dicts, lists, numbers, strings, None): what a checkpoint records."""
    plain = _to_plain(cfg)
    assert isinstance(plain, dict)
    return plain


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    return value


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """The :class:`Config` that ``data`` (from :func:`config_to_dict` or ``dataclasses.asdict``)
    describes. Strict: a key that names no setting is an error naming its path; a missing key takes
    its default, so that the configs older checkpoints recorded still load."""
    return _build(Config, data, "")


def _build(cls: type[T], data: Any, path: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'config'}: expected a mapping of {cls.__name__} settings, got {data!r}")
    types = field_types(cast(type, cls))
    for key in data:
        if key not in types:
            raise ConfigError(
                f"{join_path(path, str(key))}: {cls.__name__} has no such setting (settings: {', '.join(types)})"
            )
    values = {key: _from_plain(value, types[key], join_path(path, key)) for key, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as err:
        raise err.at(path) from None


def _item_types(annotation: Any, count: int) -> tuple[Any, ...] | None:
    """The annotations of ``count`` items of a tuple type; None if it holds another count."""
    args = typing.get_args(annotation)
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],) * count
    return args if len(args) == count else None


def _from_plain(value: Any, annotation: Any, path: str) -> Any:
    """``value`` as the annotated type where plain data spells it differently (lists for tuples,
    mappings for dataclasses, ints for floats); anything else is left for the checks to report."""
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return _build(annotation, value, path)
    if origin is tuple and isinstance(value, (list, tuple)):
        items = _item_types(annotation, len(value))
        if items is None:
            return tuple(value)
        return tuple(_from_plain(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, items)))
    if is_union(origin) and value is not None:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _from_plain(value, inner[0], path) if len(inner) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """``cfg`` with each ``dotted.path=value`` applied; tuple items by index (``data.scale.0=1000``).

    Values are Python literals parsed as the field's type (bare text for strings: ``norm=syncbn``).
    All overrides are applied to the plain data first and the config is built and checked once,
    so that settings that must agree (depth and the neck's channels) can change together.
    Setting ``class_names`` sets ``model.roi.num_classes`` to their count (and clears
    ``category_ids`` of another count).
    """
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        path, text = (part.strip() for part in item.split("=", 1))
        _set_override(data, path, text)
        names = data["class_names"]
        if path.split(".")[0] == "class_names" and isinstance(names, (list, tuple)) and names:
            data["model"]["roi"]["num_classes"] = len(names)
            if len(data["category_ids"]) != len(names):  # ids of the old classes: back to the default rule
                data["category_ids"] = []
    return config_from_dict(data)


def _set_override(data: dict[str, Any], path: str, text: str) -> None:
    """Put ``text``, parsed as the type of the setting at ``path``, into ``data`` (plain, in place)."""
    parts = path.split(".")
    node: Any = data
    annotation: Any = Config
    for depth, part in enumerate(parts):
        here = ".".join(parts[: depth + 1])
        key: str | int
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            types = field_types(annotation)
            if part not in types:
                raise ConfigError(
                    f"{here}: {annotation.__name__} has no setting {part!r} (settings: {', '.join(types)})"
                )
            key, annotation = part, types[part]
        elif typing.get_origin(annotation) is tuple and isinstance(node, list):
            items = _item_types(annotation, len(node)) or ()
            if not part.isdigit() or int(part) >= len(items):
                raise ConfigError(f"{here}: expected an index 0..{len(node) - 1} into {type_text(annotation)}")
            key, annotation = int(part), items[int(part)]
        else:
            owner = ".".join(parts[:depth])
            raise ConfigError(f"{here}: {owner} is {type_text(annotation)} ({node!r}), which has no items")
        if depth == len(parts) - 1:
            node[key] = _parse(text, annotation)
        else:
            node = node[key]


_BOOL_WORDS = {"true": True, "false": False}


def _takes_bool(annotation: Any) -> bool:
    if annotation is bool:
        return True
    return is_union(typing.get_origin(annotation)) and bool in typing.get_args(annotation)


def _parse(text: str, annotation: Any) -> Any:
    """``text`` as a Python literal in plain form; bare text where the literal fails to parse or where
    the field takes that text as it is (``norm=syncbn``, ``name=123``, ``pretrained=open-mmlab://x``).
    A bool setting also takes ``true`` / ``false`` in any case (JSON's and YAML's spelling)."""
    if _takes_bool(annotation) and text.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[text.lower()]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
    if value is not None and not isinstance(value, str) and conforms(text, annotation):
        return text
    return _to_plain(value)


def config_diff(a: Config, b: Config) -> list[str]:
    """Every setting in which ``b`` differs from ``a``, one ``dotted.path: A -> B`` each (stages by
    index, tuples of numbers whole, long tuples such as class names shortened)."""
    lines: list[str] = []
    _diff(a, b, "", lines)
    return lines


def _diff(a: Any, b: Any, path: str, lines: list[str]) -> None:
    if a == b:
        return
    if dataclasses.is_dataclass(a) and type(a) is type(b):
        for f in dataclasses.fields(a):
            _diff(getattr(a, f.name), getattr(b, f.name), join_path(path, f.name), lines)
    elif (
        isinstance(a, tuple)
        and isinstance(b, tuple)
        and len(a) == len(b)
        and any(dataclasses.is_dataclass(v) for v in a)
    ):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, join_path(path, str(i)), lines)
    else:
        lines.append(f"{path}: {_brief(a)} -> {_brief(b)}")


def _brief(value: Any) -> str:
    """A short repr: groups of settings by count, long tuples by their first items and length."""
    if isinstance(value, tuple) and any(dataclasses.is_dataclass(v) for v in value):
        return f"{len(value)} x {type(value[0]).__name__}"
    if isinstance(value, tuple) and len(value) > 6:
        return f"({', '.join(repr(v) for v in value[:3])}, ... {len(value)} in all)"
    return repr(value)
