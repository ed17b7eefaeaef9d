"""Training curves from a work dir's ``log.jsonl``: each loss, the learning rate and validation AP
against the iteration.

Training records are the trainer's (``global_step``, ``lr``, ``loss``, ``loss_*`` / ``s{t}.loss_*``,
...). Validation records are lines with ``"mode": "val"``, a ``global_step`` and numeric metrics
(e.g. ``bbox_AP``), as mmdetection's ``*.log.json`` marks them; validation points can also be given
directly (the demo passes the AP it measured after each epoch).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"
Series = tuple[list[int], list[float]]


@dataclass
class TrainingLog:
    """Series by name, each (iterations, values)."""

    losses: dict[str, Series] = field(default_factory=dict)
    lr: Series = field(default_factory=lambda: ([], []))
    val: dict[str, Series] = field(default_factory=dict)
    source: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.losses or self.lr[0] or self.val)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _append(series: dict[str, Series], name: str, step: int, value: Any) -> None:
    if _is_number(value):
        steps, values = series.setdefault(name, ([], []))
        steps.append(step)
        values.append(float(value))


def _log_file(work_dir: str | os.PathLike[str]) -> Path:
    path = Path(work_dir)
    return path / LOG_NAME if path.is_dir() else path


def _records(path: Path) -> Iterator[dict[str, Any]]:
    """The log's records that carry a ``global_step``; a line that is not JSON (a run killed
    mid-write) is skipped."""
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "global_step" in record:
            yield record


def read_training_log(work_dir: str | os.PathLike[str]) -> TrainingLog:
    """The curves of ``work_dir/log.jsonl`` (or of the file itself); empty when there is none."""
    path = _log_file(work_dir)
    log = TrainingLog(source=path if path.is_file() else None)
    for record in _records(path):
        step = int(record["global_step"])
        if record.get("mode") == "val":
            for key, value in record.items():
                if key not in ("mode", "epoch", "iter", "global_step"):
                    _append(log.val, key, step, value)
            continue
        for key, value in record.items():
            if "loss" in key:
                _append(log.losses, key, step, value)
        if _is_number(record.get("lr")):
            log.lr[0].append(step)
            log.lr[1].append(float(record["lr"]))
    return log


def epoch_end_steps(work_dir: str | os.PathLike[str]) -> dict[int, int]:
    """Epoch -> the last iteration logged in it: where an evaluation after that epoch sits."""
    ends: dict[int, int] = {}
    for record in _records(_log_file(work_dir)):
        if "epoch" in record and record.get("mode") != "val":
            epoch = int(record["epoch"])
            ends[epoch] = max(ends.get(epoch, 0), int(record["global_step"]))
    return ends


def add_val_points(log: TrainingLog, points: Iterable[tuple[int, dict[str, float]]]) -> TrainingLog:
    """Add validation metrics measured at the given iterations (kept sorted by iteration)."""
    for step, metrics in points:
        for name, value in metrics.items():
            _append(log.val, name, int(step), value)
    for name, (steps, values) in log.val.items():
        order = sorted(range(len(steps)), key=steps.__getitem__)
        log.val[name] = ([steps[i] for i in order], [values[i] for i in order])
    return log
