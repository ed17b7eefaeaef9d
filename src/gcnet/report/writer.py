"""The evaluation report: one HTML page (offline) with the metrics, per-class tables and figures.

What users look at after the 12 COCO numbers (the questions mmdetection's ``analysis_tools``
answer): AP of each class, precision-recall curves, a confusion matrix, the images where the model
fails, and the training curves. The figures need matplotlib (``pip install 'gcnet[report]'``);
without it the page keeps the tables and images and says what is missing.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from gcnet.data import DatasetError, load_image, read_coco_json
from gcnet.evaluation.coco_eval import CocoStats, evaluate_coco
from gcnet.evaluation.confusion import Confusion, ImageErrors, confusion_matrix
from gcnet.evaluation.per_class import STAT_NAMES, format_per_class, per_class_ap, write_metrics
from gcnet.report import html as H
from gcnet.report import plots
from gcnet.report.draw import draw_coco, side_by_side
from gcnet.report.training import LOG_NAME, TrainingLog, add_val_points, read_training_log

MISSING_MATPLOTLIB = (
    "The plots (AP per class, precision-recall curves, confusion matrix, training curves) "
    "need matplotlib, which is not installed: pip install 'gcnet[report]' and run again."
)


def _load_results(results: Sequence[dict[str, Any]] | str | os.PathLike[str]) -> list[dict[str, Any]]:
    if isinstance(results, (str, os.PathLike)):
        path = Path(results)
        if not path.is_file():
            raise DatasetError(f"{path}: results file not found")
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(loaded, list):
            raise DatasetError(f"{path}: expected a list of COCO results")
        return loaded
    return list(results)


def _worst(images: Sequence[ImageErrors], key: str, count: int) -> list[ImageErrors]:
    """The ``count`` images with the most misses (or false detections), ties by the other count."""
    other = "false" if key == "missed" else "missed"
    ranked = sorted(images, key=lambda e: (-getattr(e, key), -getattr(e, other), e.image_id))
    return [e for e in ranked[:count] if getattr(e, key) > 0]


def _failure_images(
    gt: dict[str, Any], results: list[dict[str, Any]], conf: Confusion, image_dir: Path, out_dir: Path, count: int
) -> tuple[str, list[str], list[tuple[int, Path]]]:
    """Ground truth | predictions of the worst images: (HTML, problems met, (image id, PNG) of
    each drawing in the page's order)."""
    images = {int(im["id"]): im for im in gt.get("images", [])}
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt.get("categories", [])}
    labels = {c: i for i, c in enumerate(conf.cat_ids)}
    gt_by_image: dict[int, list[dict[str, Any]]] = {}
    for a in gt.get("annotations", []):
        gt_by_image.setdefault(int(a["image_id"]), []).append(a)
    det_by_image: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        if float(r["score"]) >= conf.score_thr:
            det_by_image.setdefault(int(r["image_id"]), []).append(r)
    parts, problems = [], []
    drawn: list[tuple[int, Path]] = []
    for key, title in (("missed", "Most missed ground truth"), ("false", "Most false detections")):
        worst = _worst(conf.images, key, count)
        parts.append(f"<h3>{H.esc(title)}</h3>")
        if not worst:
            parts.append("<p>None.</p>")
        for rank, errors in enumerate(worst, 1):
            info = images[errors.image_id]
            try:
                rgb = load_image(image_dir / info["file_name"])
            except DatasetError as err:
                problems.append(str(err))
                continue
            dets = det_by_image.get(errors.image_id, [])
            panel = side_by_side(
                [
                    draw_coco(rgb, gt_by_image.get(errors.image_id, []), names, labels),
                    draw_coco(rgb, dets, names, labels, show_scores=True),
                ],
                [f"ground truth ({errors.num_gt})", f"predictions, score >= {conf.score_thr:g} ({len(dets)})"],
            )
            rel = f"images/{key}_{rank}.png"
            (out_dir / "images").mkdir(parents=True, exist_ok=True)
            panel.save(out_dir / rel)
            drawn.append((errors.image_id, out_dir / rel))
            caption = (
                f"{info['file_name']} (id {errors.image_id}): {errors.missed} missed, "
                f"{errors.false} false, {errors.correct} correct of {errors.num_gt} ground truth"
            )
            parts.append(H.figure(rel, caption))
    return "\n".join(parts), problems, drawn


def _metrics_section(stats: CocoStats) -> str:
    iou_types = list(stats)
    rows = [[name] + [H.number(stats[t][i]) for t in iou_types] for i, name in enumerate(STAT_NAMES)]
    return H.table(["metric"] + iou_types, rows)


def _per_class_section(stats: CocoStats) -> str:
    iou_types = [t for t in stats if t in stats.details]
    tables = {t: per_class_ap(stats.details[t]) for t in iou_types}
    header = ["class", "gt"] + [f"{t} {m}" for t in iou_types for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    rows = []
    for i, row in enumerate(tables[iou_types[0]]):
        cells: list[Any] = [row.name, row.num_gt]
        for t in iou_types:
            r = tables[t][i]
            cells += [H.number(v) for v in (r.AP, r.AP50, r.AP75, r.APs, r.APm, r.APl)]
        rows.append(cells)
    return H.table(header, rows)


def _confusion_table(conf: Confusion) -> str:
    labels = conf.labels()
    rows = [[name] + [int(v) for v in row] for name, row in zip(labels, conf.matrix)]
    return H.table(["ground truth \\ predicted", *labels], rows)


def _overview(paths: Iterable[Path], out: Path, width: int = 1400) -> Path | None:
    """The figures (and the worst images) stacked into one PNG, to share or embed the report as one
    picture; paths that do not exist are left out."""
    panels = [Image.open(p).convert("RGB") for p in paths if p.is_file()]
    if not panels:
        return None
    scaled = [p.resize((width, max(1, round(p.height * width / p.width)))) if p.width > width else p for p in panels]
    canvas = Image.new("RGB", (max(p.width for p in scaled), sum(p.height for p in scaled)), (255, 255, 255))
    y = 0
    for p in scaled:
        canvas.paste(p, (0, y))
        y += p.height
    canvas.save(out)
    return out


def write_report(
    out_dir: str | os.PathLike[str],
    ann_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    results: Sequence[dict[str, Any]] | str | os.PathLike[str],
    stats: Mapping[str, Sequence[float]] | None = None,
    *,
    train_dir: str | os.PathLike[str] | None = None,
    val_points: Sequence[tuple[int, dict[str, float]]] = (),
    title: str = "gcnet evaluation report",
    score_thr: float = 0.3,
    iou_thr: float = 0.5,
    num_images: int = 6,
) -> Path:
    """Write ``out_dir/index.html`` (with ``plots/``, ``images/``, ``metrics.json``,
    ``confusion.json`` and, with matplotlib, ``overview.png``); returns the page's path.

    ``stats`` is the evaluation already run on these results (evaluated here when not given);
    ``train_dir`` a training work dir whose ``log.jsonl`` gives the training curves; ``val_points``
    (iteration, {metric: value}) validation points, drawn when the log records no validation.
    ``score_thr`` and ``iou_thr`` set the confusion matrix and which detections the images show."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gt = read_coco_json(ann_file)
    dets = _load_results(results)
    if not isinstance(stats, CocoStats) or not stats.details:  # a plain dict of numbers: evaluate here
        iou_types = ("bbox", "segm") if any("segmentation" in r for r in dets) else ("bbox",)
        stats = evaluate_coco(gt, dets, iou_types=iou_types, verbose=False)
    write_metrics(stats, out / "metrics.json")
    evaluated = set(next(iter(stats.details.values())).image_ids) if stats.details else None
    if evaluated is not None and len(evaluated) < len(gt.get("images", [])):  # images the evaluation skipped
        gt = {
            **gt,
            "images": [im for im in gt["images"] if int(im["id"]) in evaluated],
            "annotations": [a for a in gt.get("annotations", []) if int(a["image_id"]) in evaluated],
        }
    conf = confusion_matrix(gt, dets, iou_thr=iou_thr, score_thr=score_thr)
    (out / "confusion.json").write_text(
        json.dumps(
            {
                "labels": list(conf.labels()),
                "rows": "ground truth",
                "columns": "predicted",
                "iou_thr": iou_thr,
                "score_thr": score_thr,
                "matrix": conf.matrix.tolist(),
            },
            indent=2,
        )
    )
    log = read_training_log(train_dir) if train_dir is not None else TrainingLog()
    if not log.val:
        log = add_val_points(log, val_points)

    have_plots = plots.matplotlib_available()
    figures: dict[str, Path] = {}
    if have_plots:
        details = {t: stats.details[t] for t in stats if t in stats.details}
        figures["class_ap"] = plots.plot_class_ap(
            {t: per_class_ap(a) for t, a in details.items()}, out / "plots" / "class_ap.png"
        )
        figures["pr"] = plots.plot_pr_overall(details, out / "plots" / "pr_all_classes.png")
        for t, arrays in details.items():
            figures[f"pr_{t}"] = plots.plot_pr_per_class(
                arrays, out / "plots" / f"pr_{t}_per_class.png", f"{t}: precision-recall per class"
            )
        figures["confusion"] = plots.plot_confusion(conf, out / "plots" / "confusion.png")
        if log:
            figures["training"] = plots.plot_training(log, out / "plots" / "training.png")

    def fig(key: str, caption: str) -> str:
        return H.figure(figures[key].relative_to(out).as_posix(), caption) if key in figures else ""

    failures, problems, drawn = _failure_images(gt, dets, conf, Path(image_dir), out, num_images)
    missing = [] if have_plots else [H.note(MISSING_MATPLOTLIB)]
    sections = [
        (
            "metrics",
            "COCO metrics",
            _metrics_section(stats) + '<p>Every number: <a href="metrics.json">'
            "metrics.json</a> (overall, per size, per class).</p>",
        ),
        (
            "per-class",
            "Per-class AP",
            "".join(missing) + fig("class_ap", "AP@[.5:.95] of each class") + _per_class_section(stats),
        ),
        (
            "pr",
            "Precision-recall",
            "".join(missing)
            + fig("pr", "all classes (mean over classes)")
            + "".join(fig(f"pr_{t}", f"{t}, each class") for t in stats),
        ),
        (
            "confusion",
            "Confusion matrix",
            "".join(missing)
            + f"<p>Boxes at IoU &ge; {iou_thr:g}, detections with score &ge; {score_thr:g}; rows are the ground "
            "truth, columns the prediction; the background row counts false detections, the background "
            "column missed objects.</p>" + fig("confusion", "") + _confusion_table(conf),
        ),
        ("failures", "Where the model fails", failures + "".join(H.note(p) for p in problems)),
    ]
    if log or train_dir is not None:
        body = fig("training", "losses, learning rate and validation metrics against the iteration")
        if not log:
            body = H.note(f"No training log found in {train_dir} (expected {LOG_NAME}).")
        elif not have_plots:
            body = "".join(missing)
        sections.append(("training", "Training curves", body))
    meta = H.table(
        ["", ""],
        [
            ["annotations", str(ann_file)],
            ["images", f"{str(image_dir)} ({len(gt.get('images', []))})"],
            ["detections", str(len(dets))],
            ["evaluator", stats.backend or "-"],
            ["written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")],
        ],
        css_class="meta",
    )
    (out / "index.html").write_text(H.page(title, sections, meta), encoding="utf-8")
    if have_plots:
        shown = [figures[k] for k in ("class_ap", "pr", "confusion", "training") if k in figures]
        worst: dict[int, Path] = {}  # the image with the most misses, another with the most false detections
        for key in ("missed", "false"):
            first = next(((i, path) for i, path in drawn if path.name.startswith(f"{key}_") and i not in worst), None)
            if first is not None:
                worst[first[0]] = first[1]
        _overview(shown + list(worst.values()), out / "overview.png")
    return out / "index.html"


def metrics_path_for(results_path: str | os.PathLike[str]) -> Path:
    """Where the metrics json goes beside a results json: ``x.json`` -> ``x.metrics.json``."""
    path = Path(results_path)
    return path.with_name(f"{path.stem}.metrics.json")


def find_train_dir(checkpoint: Path | None) -> Path | None:
    """A checkpoint's own work dir when it holds a training log (``work_dirs/run/latest.pth``)."""
    if checkpoint is not None and (checkpoint.parent / LOG_NAME).is_file():
        return checkpoint.parent
    return None


def summarise_test(
    stats: Mapping[str, Any],
    ann_file: str | os.PathLike[str],
    image_dir: str | os.PathLike[str],
    results_path: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    train_dir: str | os.PathLike[str] | None = None,
    title: str = "gcnet evaluation report",
) -> None:
    """What ``gcnet test`` does after COCO's lines: print the per-class table, write the metrics
    json beside the results, and the HTML report when ``report_dir`` is given."""
    table = format_per_class(stats)
    if table:
        print(table)
    if results_path is not None:
        print(f"metrics: {write_metrics(stats, metrics_path_for(results_path))}")
    if report_dir is not None:
        if results_path is None:
            raise ValueError("summarise_test: the report needs the results file")
        page = write_report(report_dir, ann_file, image_dir, results_path, stats, train_dir=train_dir, title=title)
        print(f"report: {page}")
        if not plots.matplotlib_available():
            print("report: no plots (matplotlib is not installed: pip install 'gcnet[report]')")
