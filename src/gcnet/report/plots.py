"""The report's figures, drawn with matplotlib (the optional ``report`` extra).

matplotlib's object API (``Figure`` + the Agg canvas) is used rather than pyplot: no global figure
state, no display needed. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gcnet.evaluation.coco_eval import EvalArrays
from gcnet.evaluation.confusion import Confusion
from gcnet.evaluation.per_class import IOU_CHOICES, ClassAP, pr_curve
from gcnet.report.training import TrainingLog

IOU_STYLES = {"0.5": ("IoU 0.5", "-"), "0.75": ("IoU 0.75", "--"), "0.5:0.95": ("IoU 0.5:0.95", ":")}


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_class_ap(rows: Mapping[str, Sequence[ClassAP]], path: Path) -> Path:
    """Horizontal bars of each class's AP@[.5:.95], one bar per iou type (classes without ground
    truth are left at 0 and marked "no gt")."""
    iou_types = list(rows)
    first = rows[iou_types[0]]
    names = [r.name for r in first]
    fig = _figure(7.0, max(2.0, 0.32 * len(names) * max(1, len(iou_types)) / 1.6 + 1.0))
    ax = fig.add_subplot()
    height = 0.8 / len(iou_types)
    y = np.arange(len(names))
    for i, t in enumerate(iou_types):
        values = [max(r.AP, 0.0) for r in rows[t]]
        bars = ax.barh(y + (i - (len(iou_types) - 1) / 2) * height, values, height, label=f"{t} AP")
        for bar, r in zip(bars, rows[t]):
            text = "no gt" if r.AP < 0 else f"{r.AP:.3f}"
            ax.text(bar.get_width() + 0.005, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("AP@[.5:.95]")
    ax.set_title("AP per class")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr_overall(details: Mapping[str, EvalArrays], path: Path) -> Path:
    """Precision-recall of all classes (averaged over classes) at IoU 0.5, 0.75 and 0.5:0.95."""
    fig = _figure(4.2 * len(details), 3.6)
    for i, (t, arrays) in enumerate(details.items()):
        ax = fig.add_subplot(1, len(details), i + 1)
        for iou in IOU_CHOICES:
            recall, precision = pr_curve(arrays, iou)
            label, style = IOU_STYLES[iou]
            ax.plot(recall, precision, style, label=f"{label} (AP {np.nanmean(precision):.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{t}: all classes")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def plot_pr_per_class(arrays: EvalArrays, path: Path, title: str) -> Path:
    """One small precision-recall plot per class, the three IoU settings in each."""
    k = len(arrays.cat_ids)
    cols = min(5, k)
    rows = math.ceil(k / cols)
    fig = _figure(2.4 * cols, 2.2 * rows + 0.4)
    fig.suptitle(title)
    for j in range(k):
        ax = fig.add_subplot(rows, cols, j + 1)
        for iou in IOU_CHOICES:
            recall, precision = pr_curve(arrays, iou, k=j)
            ax.plot(recall, precision, IOU_STYLES[iou][1], label=IOU_STYLES[iou][0])
        gt = arrays.num_gt[j]
        ax.set_title(f"{arrays.cat_names[j]} ({gt} gt)" if gt else f"{arrays.cat_names[j]} (no gt)", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=6, loc="lower left")
    return _save(fig, path)


def plot_confusion(conf: Confusion, path: Path) -> Path:
    """The matrix with counts; colours are each row's share (what fraction of a true class went where)."""
    labels = conf.labels()
    n = len(labels)
    size = max(4.0, 0.45 * n + 2.0)
    fig = _figure(size + 1.0, size)
    ax = fig.add_subplot()
    totals = conf.matrix.sum(axis=1, keepdims=True)
    share = np.divide(conf.matrix, totals, out=np.zeros(conf.matrix.shape), where=totals > 0)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if conf.matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(int(conf.matrix[i, j])),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black",
                    )
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title(f"confusion at IoU {conf.iou_thr:g}, score >= {conf.score_thr:g}")
    return _save(fig, path)


def _val_series(log: TrainingLog) -> dict[str, tuple[list[int], list[float]]]:
    """The headline validation metrics (``*_AP``, ``*_AP50``; all when none is so named), without
    COCO's -1 for "undefined"."""
    names = [n for n in log.val if n.endswith(("_AP", "_AP50"))] or list(log.val)
    out = {}
    for name in names:
        kept = [(s, v) for s, v in zip(*log.val[name]) if v >= 0]
        if kept:
            out[name] = ([s for s, _ in kept], [v for _, v in kept])
    return out


def plot_training(log: TrainingLog, path: Path) -> Path:
    """Each loss, the learning rate and the validation AP against the iteration."""
    val = _val_series(log)
    panels = [name for name, present in (("losses", log.losses), ("lr", log.lr[0]), ("val", val)) if present]
    fig = _figure(4.4 * max(1, len(panels)), 3.4)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        if panel == "losses":
            for name, (steps, values) in log.losses.items():
                ax.plot(
                    steps,
                    values,
                    "o-" if len(steps) <= 30 else "-",
                    markersize=3,
                    label=name,
                    linewidth=1.6 if name == "loss" else 1.0,
                )
            ax.set_yscale("log")
            ax.set_title("training losses")
            ax.legend(fontsize=6, ncol=2)
        elif panel == "lr":
            ax.plot(*log.lr, "o-" if len(log.lr[0]) <= 30 else "-", markersize=3)
            ax.set_title("learning rate")
        else:
            for name, (steps, values) in val.items():
                ax.plot(steps, values, "o-", markersize=4, label=name)
            ax.set_ylim(0, 1)
            ax.set_title("validation")
            ax.legend(fontsize=7)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    return _save(fig, path)
