"""Typed, frozen settings of the detector (backbone, FPN, RPN, RoI heads) and the checks they run.

The core's modules take these objects; ``gcnet.config`` composes them with the data pipeline and
the schedule into one run and re-exports every name here. Each dataclass checks its own fields when
it is built (``__post_init__``): a wrong type or an out-of-range value is one :class:`ConfigError`
line naming the field by its dotted path, not a shape error deep in a forward pass.
Defaults are the original's Mask R-CNN R-50 FPN 1x COCO settings (see ``shared/spec``).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Union

from gcnet.layers.context_block import FUSION_TYPES

NormType = Literal["bn", "syncbn", "frozen_bn"]

# The heads' default size (RoIConfig.num_classes = 80) means these names; Config.class_names and the
# detector default to them. They live with the model settings because the model's defaults mean them.
COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

RESNET_DEPTHS = (18, 34, 50, 101, 152)
BASIC_BLOCK_DEPTHS = (18, 34)  # the others are built of bottlenecks (4x channel expansion)


# --- checks ------------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A setting of the wrong type or out of range, or an override or key that names no setting.

    The message is one line, ``dotted.path: problem``. ``field`` and ``problem`` keep the parts
    apart so that code building an object at a known place (an override, a checkpoint's dict)
    can name it from there with :meth:`at`: a stage only knows it is *a* stage, not which.
    """

    def __init__(self, message: str, *, field: str = "", problem: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.problem = problem

    def at(self, prefix: str) -> ConfigError:
        """This error with its field named from ``prefix``, the path of the object that raised it."""
        if not self.field:
            return self
        return ConfigError(f"{join_path(prefix, self.field)}: {self.problem}")


def join_path(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def config_error(obj: object, field: str, problem: str) -> ConfigError:
    """A :class:`ConfigError` for ``field`` of ``obj``, named from the object's usual place."""
    home = getattr(obj, "_home", "")
    return ConfigError(f"{join_path(home, field)}: {problem}", field=field, problem=problem)


@dataclass(frozen=True)
class Bound:
    """A range for a number, or for each number of a tuple (IoUs in [0, 1], counts >= 1)."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False  # low itself excluded

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.open_low else value >= self.low)
        return above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"<= {self.high:g}"


POSITIVE = Bound(0, open_low=True)
AT_LEAST_1 = Bound(1)
NON_NEGATIVE = Bound(0)
UNIT = Bound(0, 1)
FRACTION = Bound(0, 1, open_low=True)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls`` (annotations are strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def is_union(origin: Any) -> bool:
    """Whether ``typing.get_origin`` names a union: ``Optional[X]`` / ``Union`` and ``X | None`` alike."""
    return origin is Union or origin is types.UnionType


def conforms(value: Any, annotation: Any) -> bool:
    """Whether ``value`` is of the annotated type; an int is a float (PEP 484), a bool no int."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if is_union(origin):
        return any(conforms(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(conforms(v, args[0]) for v in value)
        return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args))
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, annotation)


_WORDS = {
    int: ("an int", "ints"),
    float: ("a float", "floats"),
    bool: ("a bool", "bools"),
    str: ("a string", "strings"),
}


def type_text(annotation: Any) -> str:
    """The annotated type in words, for messages: 'a tuple of 4 bools', 'None or a float'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if is_union(origin):
        words = " or ".join(type_text(a) for a in args if a is not type(None))
        return f"None or {words}" if type(None) in args else words
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_plural(args[0])}"
        if len(set(args)) == 1:
            return f"a tuple of {len(args)} {_plural(args[0])}"
        return "a tuple (" + ", ".join(type_text(a) for a in args) + ")"
    if annotation in _WORDS:
        return _WORDS[annotation][0]
    return f"a {getattr(annotation, '__name__', annotation)}"


def _plural(annotation: Any) -> str:
    if annotation in _WORDS:
        return _WORDS[annotation][1]
    if isinstance(annotation, type):
        return f"{annotation.__name__}s"
    return f"items that are {type_text(annotation)}"


def check_fields(obj: object, bounds: Mapping[str, Bound] | None = None, non_empty: tuple[str, ...] = ()) -> None:
    """Check every field of ``obj`` against its annotation, and the listed ones against a range
    (every item, for tuples) or for being empty; raise the first problem as a ConfigError."""
    cls: type = type(obj)  # as `type`: mypy takes type[object] for unhashable (the cache key)
    for name, annotation in field_types(cls).items():
        value = getattr(obj, name)
        bound = (bounds or {}).get(name)
        typed = conforms(value, annotation)
        empty = typed and name in non_empty and len(value) == 0
        numbers = value if isinstance(value, tuple) else () if value is None else (value,)
        if typed and not empty and (bound is None or all(bound.holds(v) for v in numbers)):
            continue
        expected = type_text(annotation)
        if name in non_empty:
            expected = expected.replace("a tuple", "a non-empty tuple", 1)
        if bound is not None:
            expected += f", each {bound}" if typing.get_origin(annotation) is tuple else f" {bound}"
        raise config_error(obj, name, f"expected {expected}, got {value!r}")


def check_iou_order(obj: Any) -> None:
    """An assigner's negatives lie below its positives: neg_iou <= pos_iou (equal in the RoI stages)."""
    if obj.neg_iou > obj.pos_iou:
        raise config_error(obj, "neg_iou", f"expected at most pos_iou ({obj.pos_iou}), got {obj.neg_iou!r}")


# --- the detector's settings ---------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet / ResNeXt as the original builds it for detection (style 'pytorch')."""

    _home: ClassVar[str] = "model.backbone"

    depth: int = 50
    groups: int = 1
    base_width: int = 64
    base_channels: int = 64
    # GC block after conv3 of every bottleneck of the selected stages (c2..c5); None = no GC.
    gc_ratio: float | None = None
    gc_stages: tuple[bool, bool, bool, bool] = (False, True, True, True)
    gc_pooling: Literal["att", "avg"] = "att"
    gc_fusions: tuple[str, ...] = ("channel_add",)
    # Deformable conv v1 replacing conv2 (3x3) of every bottleneck of the selected stages.
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    norm: NormType = "bn"
    norm_eval: bool = True
    frozen_stages: int = 1
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    # Where ImageNet weights come from when training starts ("torchvision://resnet50", a path, or None).
    pretrained: str | None = "torchvision://resnet50"
    # From scratch (pretrained None): "original" = the original's Kaiming fan_out init, with the last
    # norm of every block at zero when zero_init_residual; "pytorch" = PyTorch's default layer init.
    scratch_init: Literal["original", "pytorch"] = "original"
    zero_init_residual: bool = True

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "groups": AT_LEAST_1,
                "base_width": AT_LEAST_1,
                "base_channels": AT_LEAST_1,
                "gc_ratio": FRACTION,
                "frozen_stages": Bound(-1, 4),
                "out_indices": Bound(0, 3),
            },
            non_empty=("gc_fusions", "out_indices"),
        )
        if self.depth not in RESNET_DEPTHS:
            depths = ", ".join(map(str, RESNET_DEPTHS))
            raise config_error(self, "depth", f"expected one of {depths}, got {self.depth}")
        if self.depth in BASIC_BLOCK_DEPTHS and (self.groups, self.base_width) != (1, 64):
            raise config_error(
                self,
                "groups",
                f"ResNet-{self.depth} is built of BasicBlocks, which take groups=1 "
                f"and base_width=64 only, got groups={self.groups}, base_width={self.base_width}",
            )
        fusions = self.gc_fusions
        if any(f not in FUSION_TYPES for f in fusions) or len(set(fusions)) != len(fusions):
            raise config_error(self, "gc_fusions", f"expected distinct names from {FUSION_TYPES}, got {fusions!r}")
        if list(self.out_indices) != sorted(set(self.out_indices)):
            raise config_error(
                self, "out_indices", f"expected increasing stage indices, no repeats, got {self.out_indices!r}"
            )

    @property
    def out_channels(self) -> tuple[int, ...]:
        """Channels of the returned stages (c2..c5 at ``out_indices``): what the neck must take."""
        expansion = 1 if self.depth in BASIC_BLOCK_DEPTHS else 4
        return tuple(self.base_channels * 2**i * expansion for i in self.out_indices)


@dataclass(frozen=True)
class FPNConfig:
    """FPN: c2..c5 in, ``num_outs`` levels out (p2..p6), as the original's Mask R-CNN neck."""

    _home: ClassVar[str] = "model.neck"

    in_channels: tuple[int, ...] = (256, 512, 1024, 2048)
    out_channels: int = 256
    num_outs: int = 5

    def __post_init__(self) -> None:
        check_fields(
            self,
            {"in_channels": AT_LEAST_1, "out_channels": AT_LEAST_1, "num_outs": AT_LEAST_1},
            non_empty=("in_channels",),
        )
        if self.num_outs < len(self.in_channels):
            raise config_error(
                self,
                "num_outs",
                f"expected at least one level per input ({len(self.in_channels)} in_channels), got {self.num_outs}",
            )


@dataclass(frozen=True)
class RPNConfig:
    """RPN head, anchors, proposal settings (train and test) and its target/loss settings."""

    _home: ClassVar[str] = "model.rpn"

    in_channels: int = 256
    feat_channels: int = 256
    strides: tuple[int, ...] = (4, 8, 16, 32, 64)
    scales: tuple[float, ...] = (8.0,)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    # test-time proposals (nms_pre 0 keeps every anchor's box before NMS)
    test_nms_pre: int = 1000
    test_max_per_img: int = 1000
    nms_iou: float = 0.7
    min_bbox_size: float = 0.0
    # train-time proposals
    train_nms_pre: int = 2000
    train_max_per_img: int = 1000
    # targets and losses
    pos_iou: float = 0.7
    neg_iou: float = 0.3
    min_pos_iou: float = 0.3
    match_low_quality: bool = True
    num_samples: int = 256
    pos_fraction: float = 0.5
    allowed_border: int = -1  # negative: anchors crossing the image border count too
    loss_bbox: Literal["l1", "smooth_l1"] = "l1"
    smooth_l1_beta: float = 1.0 / 9.0
    loss_cls_weight: float = 1.0
    loss_bbox_weight: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "in_channels": AT_LEAST_1,
                "feat_channels": AT_LEAST_1,
                "strides": AT_LEAST_1,
                "scales": POSITIVE,
                "ratios": POSITIVE,
                "test_nms_pre": NON_NEGATIVE,
                "test_max_per_img": AT_LEAST_1,
                "nms_iou": UNIT,
                "min_bbox_size": NON_NEGATIVE,
                "train_nms_pre": NON_NEGATIVE,
                "train_max_per_img": AT_LEAST_1,
                "pos_iou": UNIT,
                "neg_iou": UNIT,
                "min_pos_iou": UNIT,
                "num_samples": AT_LEAST_1,
                "pos_fraction": FRACTION,
                "smooth_l1_beta": POSITIVE,
                "loss_cls_weight": NON_NEGATIVE,
                "loss_bbox_weight": NON_NEGATIVE,
            },
            non_empty=("strides", "scales", "ratios"),
        )
        check_iou_order(self)


@dataclass(frozen=True)
class RoIStageConfig:
    """One bbox (+ mask) stage: Mask R-CNN has one, Cascade Mask R-CNN three."""

    _home: ClassVar[str] = "model.roi.stages.*"  # overrides and checkpoints name the stage's index

    target_stds: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    reg_class_agnostic: bool = False
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    min_pos_iou: float = 0.5
    match_low_quality: bool = True
    loss_weight: float = 1.0
    loss_bbox: Literal["l1", "smooth_l1"] = "l1"
    smooth_l1_beta: float = 1.0

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "target_stds": POSITIVE,
                "pos_iou": UNIT,
                "neg_iou": UNIT,
                "min_pos_iou": UNIT,
                "loss_weight": NON_NEGATIVE,
                "smooth_l1_beta": POSITIVE,
            },
        )
        check_iou_order(self)


def cascade_stages() -> tuple[RoIStageConfig, RoIStageConfig, RoIStageConfig]:
    """Cascade Mask R-CNN's three stages: IoU 0.5/0.6/0.7 without low-quality matches, halving
    box-coder stds, loss weights 1/0.5/0.25, class-agnostic regression with SmoothL1 (beta 1)."""
    stds = ((0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1), (0.033, 0.033, 0.067, 0.067))
    return tuple(  # type: ignore[return-value]
        RoIStageConfig(
            target_stds=s,
            reg_class_agnostic=True,
            pos_iou=iou,
            neg_iou=iou,
            min_pos_iou=iou,
            match_low_quality=False,
            loss_weight=w,
            loss_bbox="smooth_l1",
            smooth_l1_beta=1.0,
        )
        for s, iou, w in zip(stds, (0.5, 0.6, 0.7), (1.0, 0.5, 0.25))
    )


@dataclass(frozen=True)
class RoIConfig:
    """RoI heads: feature extraction, bbox/mask heads, per-stage settings, sampling, test-time NMS."""

    _home: ClassVar[str] = "model.roi"

    num_classes: int = len(COCO_CLASSES)
    in_channels: int = 256
    featmap_strides: tuple[int, ...] = (4, 8, 16, 32)
    finest_scale: int = 56
    bbox_roi_size: int = 7
    mask_roi_size: int = 14
    fc_channels: int = 1024
    mask_convs: int = 4
    mask_size: int = 28
    stages: tuple[RoIStageConfig, ...] = (RoIStageConfig(),)
    # sampling (every stage)
    num_samples: int = 512
    pos_fraction: float = 0.25
    add_gt_as_proposals: bool = True
    # test-time post-processing (a negative score_thr keeps every score; max_per_img 0 keeps all)
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    mask_thr: float = 0.5
    # One NMS over all classes (mmdet's nms=dict(class_agnostic=True)) instead of one per class.
    class_agnostic_nms: bool = False
    # One score threshold per class in place of score_thr (empty: score_thr for every class). Like
    # score_thr it filters before NMS: with class-wise NMS that keeps exactly the detections a filter
    # after NMS would keep, and the best max_per_img are then chosen among those that pass.
    class_score_thr: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "num_classes": AT_LEAST_1,
                "in_channels": AT_LEAST_1,
                "featmap_strides": AT_LEAST_1,
                "finest_scale": AT_LEAST_1,
                "bbox_roi_size": AT_LEAST_1,
                "mask_roi_size": AT_LEAST_1,
                "fc_channels": AT_LEAST_1,
                "mask_convs": NON_NEGATIVE,
                "mask_size": AT_LEAST_1,
                "num_samples": AT_LEAST_1,
                "pos_fraction": FRACTION,
                "score_thr": Bound(high=1),
                "nms_iou": UNIT,
                "max_per_img": NON_NEGATIVE,
                "mask_thr": FRACTION,
                "class_score_thr": Bound(high=1),
            },
            non_empty=("featmap_strides", "stages"),
        )
        if self.class_score_thr and len(self.class_score_thr) != self.num_classes:
            raise config_error(
                self,
                "class_score_thr",
                f"expected one threshold per class ({self.num_classes}), or () for score_thr "
                f"everywhere, got {len(self.class_score_thr)}: {self.class_score_thr!r}",
            )
        if self.mask_size != 2 * self.mask_roi_size:
            raise config_error(
                self,
                "mask_size",
                f"expected 2 * mask_roi_size = {2 * self.mask_roi_size} "
                f"(the mask head upsamples its RoIs 2x), got {self.mask_size}",
            )

    @property
    def cascade(self) -> bool:
        return len(self.stages) > 1


@dataclass(frozen=True)
class ModelConfig:
    """The whole detector: backbone, neck, RPN and RoI heads (``with_mask`` adds the mask branch)."""

    _home: ClassVar[str] = "model"

    backbone: BackboneConfig = BackboneConfig()
    neck: FPNConfig = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi: RoIConfig = RoIConfig()
    with_mask: bool = True
    # Test-time horizontal-flip augmentation (gcnet.models.tta; mmdet 3.x's --tta). Off: the
    # original's test pipeline. Training is unaffected.
    test_flip: bool = False

    def __post_init__(self) -> None:
        """The parts fit together: what would otherwise be a shape error in the first forward."""
        check_fields(self)
        neck, feats = self.neck, self.backbone.out_channels
        if neck.in_channels != feats:
            raise config_error(
                self,
                "neck.in_channels",
                f"expected {feats}, the channels of the ResNet-"
                f"{self.backbone.depth} stages {self.backbone.out_indices} "
                f"(base_channels {self.backbone.base_channels}), got {neck.in_channels}",
            )
        for part in ("rpn", "roi"):
            if getattr(self, part).in_channels != neck.out_channels:
                raise config_error(
                    self,
                    f"{part}.in_channels",
                    f"expected the neck's out_channels ({neck.out_channels}), got {getattr(self, part).in_channels}",
                )
        if len(self.rpn.strides) != neck.num_outs:
            raise config_error(
                self, "rpn.strides", f"expected one stride per neck level ({neck.num_outs}), got {self.rpn.strides}"
            )
        if len(self.roi.featmap_strides) > neck.num_outs:
            raise config_error(
                self,
                "roi.featmap_strides",
                f"expected at most one stride per neck level ({neck.num_outs}), got {self.roi.featmap_strides}",
            )
