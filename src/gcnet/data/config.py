"""The image pipeline's settings, checked when built like the model's (see ``gcnet.models.config``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from gcnet.models.config import AT_LEAST_1, NON_NEGATIVE, POSITIVE, UNIT, check_fields


@dataclass(frozen=True)
class DataConfig:
    """Image pipeline of the original (resize keep-ratio, flip, normalise RGB, pad to 32)."""

    _home: ClassVar[str] = "data"

    scale: tuple[int, int] = (1333, 800)  # (long edge max, short edge max)
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    size_divisor: int = 32
    flip_prob: float = 0.5
    images_per_gpu: int = 2
    workers_per_gpu: int = 2
    min_size: int = 32
    # Training drops images without annotations (the original's filter_empty_gt); False keeps them
    # as negatives: every anchor and proposal on them is background.
    filter_empty: bool = True
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None

    def __post_init__(self) -> None:
        check_fields(
            self,
            {
                "scale": AT_LEAST_1,
                "std": POSITIVE,
                "size_divisor": AT_LEAST_1,
                "flip_prob": UNIT,
                "images_per_gpu": AT_LEAST_1,
                "workers_per_gpu": NON_NEGATIVE,
                "min_size": NON_NEGATIVE,
            },
        )
