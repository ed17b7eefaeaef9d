"""`gcnet train | test | predict | bench | export | zoo | demo | browse | flops`: argument parsing and messages only.

Each command is a short adapter over a library call; models come from :mod:`gcnet.build`, so the
CLI accepts exactly what ``gcnet.build_detector`` accepts. Errors the user can fix print as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import torch

from gcnet import __version__
from gcnet.bench import DEFAULT_IMAGE_SIZE, PEER_NAME, ROW_HEADER, format_row, run_bench
from gcnet.browse import browse, format_dataset_stats
from gcnet.build import build, check_source, default_device, resolve
from gcnet.checkpoint import CheckpointError
from gcnet.config import ConfigError, apply_overrides
from gcnet.data import CocoDetection, DatasetError
from gcnet.demo import run_demo
from gcnet.engine import (
    LoaderWorkerDied,
    NonFiniteLossError,
    RankLostError,
    TrainingStopped,
    init_distributed,
    teardown_distributed,
    train,
)
from gcnet.errors import UserError, warn_line
from gcnet.evaluation import evaluate_model
from gcnet.export import export_onnx, export_program, save_programs
from gcnet.flops import count_flops, format_count, gc_overhead, plain_twin, zoo_columns
from gcnet.inference import expand_image_paths, predict_to_dir, to_rgb_array
from gcnet.paths import check_output_dir, check_output_file, describe_os_error, is_user_os_error
from gcnet.report import summarise_test
from gcnet.report.writer import find_train_dir
from gcnet.video import is_video, predict_video, probe, video_output_names
from gcnet.zoo import ZOO
from gcnet.zoo_flops import ZOO_FLOPS

FAST_HELP = "inference mode: folded BN, channels-last, fastest CPU conv kernels (CPU: ~0.63x the time)"
SOURCE_HELP = (
    "a zoo config name (see `gcnet zoo`), `gcnet-demo`, or a checkpoint file gcnet wrote "
    "(it records its config and classes)"
)
CHECKPOINT_HELP = "weights: a path, an http(s) URL, a zoo config name, or `zoo` for the config's published file"
DEVICE_HELP = "cpu, cuda or cuda:N (default: cuda when there is one, else cpu)"
EXIT_CODES = """exit codes: 0 done; 1 done, but some images could not be read (skipped, each named in a warning);
2 an error you can fix (one line; --debug shows its traceback); 130 interrupted (Ctrl-C);
141 stdout closed by its reader (e.g. `gcnet zoo | head -1`), quietly"""
EXIT_SKIPPED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_CLOSED_PIPE = 1, 2, 130, 141
USER_ERRORS = (UserError, DatasetError, CheckpointError, ConfigError)  # their messages name the file and problem


# ---- commands ----------------------------------------------------------------------------------


def cli_zoo(args: argparse.Namespace) -> int:
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:g}"

    flops_head = f" {'params M':>8} {'GFLOPs':>6} {'GC FLOPs':>8}" if args.flops else ""
    print(f"{'config':<78} {'mem GB':>6} {'fps':>5} {'box AP':>6} {'mask AP':>7}" + flops_head)
    for name, e in ZOO.items():
        cells = ""
        if args.flops:  # counted by benchmarks/count_flops.py at 1333x800 (see `gcnet flops`)
            row = ZOO_FLOPS[name]
            params, gflops, gc = zoo_columns(row["params"], sum(row["flops"].values()), row["gc_flops_share"])
            cells = f" {params:>8} {gflops:>6} {gc:>8}"
        print(f"{name:<78} {num(e.mem_gb):>6} {num(e.fps):>5} {num(e.box_ap):>6} {num(e.mask_ap):>7}" + cells)
        if args.urls:
            print(f"    {e.url}")
    return 0


def _weights_given(args: argparse.Namespace) -> None:
    """predict and test need trained weights: the source file itself or --checkpoint."""
    check_source(args.config)
    if args.checkpoint is None and not Path(args.config).is_file():
        raise UserError(
            f"{args.config} is a config, not a checkpoint file: give its weights with "
            "--checkpoint (a file, a URL, or `zoo` for the published file)"
        )


class _Skips:
    """Counts the images a command skipped, warning about each as ``gcnet <cmd>: warning: ...``."""

    def __init__(self, command: str) -> None:
        self.command, self.count = command, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        warn_line(f"gcnet {self.command}: warning: {message}")

    def status(self, total: int) -> int:
        """The exit code: 0, or 1 after a summary line when images were skipped."""
        if not self.count:
            return 0
        warn_line(f"gcnet {self.command}: warning: skipped {self.count} of {total} image(s) that could not be read")
        return EXIT_SKIPPED


def cli_predict(args: argparse.Namespace) -> int:
    _weights_given(args)
    videos = [p for p in args.images if is_video(p) and not p.is_dir()]
    others = [p for p in args.images if p not in videos]
    images = expand_image_paths(others) if others else []  # before the model loads: a typo fails at once
    for video in videos:
        probe(video)  # PyAV installed, each video readable
    overrides = _postprocess_overrides(args)
    built = build(args.config, args.checkpoint, overrides=overrides, device=default_device(args.device), fast=args.fast)
    skips = _Skips("predict")
    tiling = {"tile": args.tile, "tile_overlap": args.tile_overlap, "tile_drop_cut": not args.tile_keep_cut}
    work = {"batch_size": args.batch_size, **tiling}
    done = broken = 0
    if images:
        out = predict_to_dir(built.model, images, args.out, built.config.data, args.score_thr, on_skip=skips, **work)
        rate = out.done / out.seconds if out.seconds > 0 else 0.0
        print(f"wrote {out.done} drawing(s) to {args.out}, {out.detections} and {out.images} ({rate:.2f} images/s)")
        done += out.done
    for video, name in zip(videos, video_output_names(videos)):
        clip = predict_video(built.model, video, args.out, built.config.data, args.score_thr, name=name, **work)
        if clip.problem:
            broken += 1
            warn_line(f"gcnet predict: warning: {clip.problem}; wrote the {clip.frames} frame(s) before it")
        print(f"wrote {clip.video} ({clip.frames} frames, {clip.fps:.2f} frames/s), {clip.detections}, {clip.images}")
        done += clip.frames
    if done == 0:
        what = f"{len(images)} image(s)" if not videos else f"{len(images) + len(videos)} input(s)"
        raise UserError(f"none of the {what} could be read")
    return skips.status(len(images)) or (EXIT_SKIPPED if broken else 0)


def cli_test(args: argparse.Namespace) -> int:
    _weights_given(args)
    try:
        ctx = init_distributed(args.device)
    except ValueError as err:  # torchrun variables or --device that cannot work
        raise UserError(str(err)) from None
    try:
        dataset = CocoDetection(args.data, args.images)  # annotations and images checked before the model loads
        overrides = _postprocess_overrides(args)
        built = build(args.config, args.checkpoint, overrides=overrides, device=ctx.device, fast=args.fast)
        skips = _Skips("test")
        out = args.out if args.out is not None or args.report is None else args.report / "results.json"
        stats = evaluate_model(
            built.model, args.data, args.images, built.config.data, args.batch_size, out, on_skip=skips
        )
        if stats:  # rank 0: per-class table, metrics json, report
            summarise_test(
                stats,
                args.data,
                args.images,
                out,
                args.report,
                args.train_dir or find_train_dir(built.checkpoint),
                f"gcnet test: {built.config.name}",
            )
    finally:
        teardown_distributed()
    return skips.status(len(dataset))


def cli_train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done (or stopped early by train.patience), 2 an error the user can fix (a
    NaN/inf loss too), 128 + signal (130 Ctrl-C, 143 SIGTERM) when a signal stopped the run after
    it saved latest.pth: `--resume` continues it; 75 when this rank lost the others (one died, or
    did not answer within train.dist_timeout_s): requeue with `--resume`."""
    cfg, _, _ = resolve(args.config, None, args.overrides)
    paths = {
        "train_ann": args.data,
        "train_images": args.images,
        "val_ann": args.val_data,
        "val_images": args.val_images,
    }
    given: dict[str, Any] = {k: str(v) for k, v in paths.items() if v is not None}
    train_cfg = cfg.train if args.load_from is None else dataclasses.replace(cfg.train, load_from=args.load_from)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **given), train=train_cfg)

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, list[float]]:
        return evaluate_model(model, cfg.data.val_ann, cfg.data.val_images, cfg.data)  # type: ignore[arg-type]

    evaluate_fn = evaluate if cfg.data.val_ann and cfg.data.val_images else None
    try:
        final = train(
            cfg,
            args.work_dir,
            resume=args.resume,
            device=args.device,
            evaluate_fn=evaluate_fn,
            overwrite=args.overwrite,
        )
    except TrainingStopped as stop:
        print(f"gcnet train: {stop}", file=sys.stderr)
        return stop.exit_code
    except (RankLostError, LoaderWorkerDied) as lost:
        print(f"gcnet train: error: {lost}", file=sys.stderr)
        return lost.exit_code
    except (ValueError, NonFiniteLossError) as err:
        raise UserError(str(err)) from None
    if os.environ.get("RANK", "0") not in ("", "0"):  # one rank says it (the group is gone by now)
        return 0
    print(f"final checkpoint: {final}")
    if evaluate_fn is not None and cfg.train.save_best and (final.parent / "best.pth").is_file():
        print(f"best checkpoint ({cfg.train.save_best}): {final.parent / 'best.pth'}")
    return 0


def cli_bench(args: argparse.Namespace) -> int:
    image_size: Any = DEFAULT_IMAGE_SIZE
    if args.images is not None:
        if args.peer or args.train:
            raise UserError("--images times real images for gcnet alone; --peer and --train use the synthetic size")
        image_size = [to_rgb_array(p) for p in expand_image_paths([args.images])[: args.iters]]
    results = run_bench(
        args.config,
        checkpoint=args.checkpoint,
        overrides=args.overrides,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        iters=args.iters,
        peer=args.peer,
        train=args.train,
        fast=args.fast,
        image_size=image_size,
    )
    print(ROW_HEADER)
    for result in results:  # the peer's rows carry the peer's own name
        print(format_row(result, None if result.name == PEER_NAME else args.config))
    return 0


def cli_export(args: argparse.Namespace) -> int:
    built = build(args.config, args.checkpoint, overrides=args.overrides, device="cpu")
    size = (args.height, args.width)
    written: list[Path] = []
    if args.format in ("all", "torch"):
        written += save_programs(export_program(built.model, size), args.out).values()
    if args.format in ("all", "onnx"):
        written += export_onnx(built.model, args.out, size).values()
    for path in written:
        print(path)
    return 0


def cli_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    summary = run_demo(args.work_dir, args.overrides)
    print(json.dumps(summary, indent=2))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {args.work_dir}")
    return 0


def cli_browse(args: argparse.Namespace) -> int:
    stats = browse(args.annotations, args.images, args.out, limit=args.limit)
    print(format_dataset_stats(stats))
    print(f"drew {stats.drawn} image(s) to {args.out} (index.html, stats.json)")
    return 0


def cli_flops(args: argparse.Namespace) -> int:
    cfg, _, _ = resolve(args.config, None, args.overrides)
    size = (int(args.size[0]), int(args.size[1])) if args.size else None
    count = count_flops(cfg, size)
    overhead = None
    if cfg.model.backbone.gc_ratio is not None:
        overhead = gc_overhead(count, count_flops(plain_twin(cfg), size))
    print(format_count(count, overhead))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "zoo": cli_zoo,
    "predict": cli_predict,
    "test": cli_test,
    "train": cli_train,
    "bench": cli_bench,
    "export": cli_export,
    "demo": cli_demo,
    "browse": cli_browse,
    "flops": cli_flops,
}


# ---- parser ------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line too, like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _number(kind: type, low: float | None = None, high: float | None = None, multiple: int = 1) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` in [low, high] and a multiple of ``multiple``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if (
            (low is not None and value < low)
            or (high is not None and value > high)
            or (multiple > 1 and value % multiple)
        ):
            rule = [
                f">= {low:g}" if low is not None else "",
                f"<= {high:g}" if high is not None else "",
                f"a multiple of {multiple}" if multiple > 1 else "",
            ]
            raise argparse.ArgumentTypeError(f"{text} must be {' and '.join(r for r in rule if r)}")
        return value

    return parse


POSITIVE = _number(int, low=1)


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value by dotted path, e.g. --set train.lr=0.01 "
        "or --set model.roi.stages.1.pos_iou=0.65",
    )


def _add_tta(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tta",
        dest="overrides",
        action="append_const",
        const="model.test_flip=True",
        help="horizontal-flip test-time augmentation, merged as mmdetection 3.x merges it "
        "(= --set model.test_flip=True; about twice the time)",
    )


def _class_threshold(text: str) -> tuple[str, float]:
    """An argparse type: ``NAME=THR`` (split at the last '=': class names may hold spaces)."""
    name, equals, value = text.rpartition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=THR")
    try:
        return name, _number(float, 0, 1)(value)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{text}: {err}") from None


def _add_postprocess_options(p: argparse.ArgumentParser) -> None:
    """The model's own test-time filtering (model.roi.*), which decides what the model returns."""
    group = p.add_argument_group("the model's post-processing (each flag = a --set model.roi.* override)")
    group.add_argument(
        "--max-det",
        type=_number(int, low=0),
        default=None,
        metavar="N",
        help="keep the N best-scoring detections per image (model.roi.max_per_img; 0 keeps all; "
        "default: the model's, 100 for the zoo)",
    )
    group.add_argument(
        "--class-agnostic-nms",
        action="store_true",
        help="one NMS over all classes: overlapping boxes of different classes suppress each other "
        "(model.roi.class_agnostic_nms; default: NMS within each class)",
    )
    group.add_argument(
        "--class-score-thr",
        nargs="+",
        action="extend",
        type=_class_threshold,
        default=None,
        metavar="NAME=THR",
        help="the model's score threshold for the named classes, applied before NMS, e.g. person=0.5 "
        "'traffic light'=0.3 (model.roi.class_score_thr; other classes keep model.roi.score_thr, 0.05 for the zoo)",
    )


def _postprocess_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, then the ones the post-processing flags stand for (a flag wins over a
    --set of the same setting, and the built config records them)."""
    overrides = list(args.overrides)
    if args.max_det is not None:
        overrides.append(f"model.roi.max_per_img={args.max_det}")
    if args.class_agnostic_nms:
        overrides.append("model.roi.class_agnostic_nms=True")
    if args.class_score_thr:
        overrides.append(f"model.roi.class_score_thr={_class_thresholds(args, overrides)!r}")
    return overrides


def _class_thresholds(args: argparse.Namespace, overrides: list[str]) -> tuple[float, ...]:
    """One threshold per class of the model (its config, or the one its checkpoint records): the
    named classes' as given, the others' its score_thr. Unknown names fail before the model builds."""
    cfg = apply_overrides(resolve(args.config, args.checkpoint)[0], overrides)
    given = dict(args.class_score_thr)
    unknown = [name for name in given if name not in cfg.class_names]
    if unknown:
        raise UserError(
            f"--class-score-thr: no class {', '.join(map(repr, unknown))} in {cfg.name}; "
            f"its classes: {', '.join(cfg.class_names)}"
        )
    return tuple(given.get(name, cfg.model.roi.score_thr) for name in cfg.class_names)


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help=SOURCE_HELP)
    _add_overrides(p)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gcnet",
        description=__doc__.splitlines()[0],
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gcnet {__version__} (torch {torch.__version__})")
    parser.add_argument("--debug", action="store_true", help="show an error's traceback instead of its one line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("zoo", help="list the published models with the seed's numbers")
    p.add_argument("--urls", action="store_true", help="also print checkpoint URLs")
    p.add_argument(
        "--flops",
        action="store_true",
        help="also print parameters, GFLOPs at 1333x800 and the GC blocks' share of them",
    )

    p = sub.add_parser("browse", help="draw a COCO-format set's ground truth and print its statistics")
    p.add_argument("annotations", type=Path, help="COCO instances json")
    p.add_argument("--images", required=True, type=Path, help="image directory")
    p.add_argument("--out", required=True, type=Path, help="output folder: a PNG per image, index.html, stats.json")
    p.add_argument("--limit", type=int, default=None, help="draw only the first N images (by id; default: all)")

    p = sub.add_parser("flops", help="parameters and GFLOPs of backbone, neck and heads (torch's FlopCounterMode)")
    _add_config(p)
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("W", "H"),
        help="input image size (default: the config's test scale, 1333 800 for the zoo)",
    )

    p = sub.add_parser("predict", help="detect objects in images and videos: drawings and COCO results json")
    _add_config(p)
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="image files, directories of images and/or videos (.mp4 .avi .mov .mkv; needs gcnet[video])",
    )
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (not needed when CONFIG is a checkpoint)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: a PNG per image, detections.json (COCO results) and images.json "
        "(its images and categories: COCO('images.json').loadRes('detections.json')); per video "
        "the annotated video and its own NAME.detections.json and NAME.images.json (one image per frame)",
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--score-thr",
        type=_number(float, 0, 1),
        default=0.3,
        help="keep detections scoring at least this, in the drawings and in detections.json alike "
        "(0 keeps every detection the model returns); a filter after the model's own threshold "
        "(model.roi.score_thr, 0.05 for the zoo; see --class-score-thr)",
    )
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    _add_tta(p)
    p.add_argument(
        "--batch-size",
        type=_number(int, low=1),
        default=1,
        metavar="N",
        help="images (or video frames) per forward pass, same-size ones together; the next are decoded meanwhile",
    )
    p.add_argument(
        "--tile",
        type=_number(int, low=1),
        default=None,
        metavar="SIZE",
        help="also detect in overlapping SIZE x SIZE windows and merge them with the whole image's "
        "detections by NMS (SAHI's sliced prediction): finds small objects in large images",
    )
    p.add_argument(
        "--tile-overlap",
        type=_number(float, 0, 0.99),
        default=0.2,
        metavar="F",
        help="the share of a window its neighbour overlaps (default 0.2)",
    )
    p.add_argument(
        "--tile-keep-cut",
        action="store_true",
        help="keep a window's detections that reach its edges inside the image (objects it cut, "
        "dropped by default: they are whole in a neighbour or the full image), as SAHI does",
    )
    _add_postprocess_options(p)

    p = sub.add_parser("test", help="COCO bbox + segm evaluation of a checkpoint")
    _add_config(p)
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="DIR",
        help="write an HTML report there: per-class AP, PR curves, confusion matrix, failure images, "
        "training curves (plots need matplotlib: pip install 'gcnet[report]')",
    )
    p.add_argument(
        "--train-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="training work dir whose log.jsonl the report draws (default: the checkpoint's folder)",
    )
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (not needed when CONFIG is a checkpoint)")
    p.add_argument("--data", required=True, type=Path, help="COCO instances json")
    p.add_argument("--images", required=True, type=Path, help="image directory")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write the detections there (COCO results json), before the evaluation runs",
    )
    p.add_argument("--device", default=None, help=DEVICE_HELP)
    p.add_argument(
        "--batch-size",
        type=POSITIVE,
        default=1,
        help="images per forward pass (same-size images; the original tests one at a time)",
    )
    p.add_argument("--fast", action="store_true", help=FAST_HELP)
    _add_postprocess_options(p)
    _add_tta(p)

    p = sub.add_parser("train", help="train a detector (torchrun for several GPUs)")
    _add_config(p)
    p.add_argument("--data", type=Path, default=None, help="train COCO instances json")
    p.add_argument("--images", type=Path, default=None, help="train image directory")
    p.add_argument("--val-data", type=Path, default=None)
    p.add_argument("--val-images", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/run"))
    p.add_argument(
        "--load-from",
        default=None,
        metavar="SOURCE",
        help="fine-tune: start from a trained model (path, URL, zoo name, or `zoo` for CONFIG's "
        "published file); weights that fit load, the class layers start afresh "
        "(= --set train.load_from=SOURCE)",
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --work-dir from its newest readable checkpoint"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in a --work-dir that holds checkpoints (deletes them and the logs)",
    )
    p.add_argument("--device", default=None)

    p = sub.add_parser("bench", help="inference fps / memory and training step, as the seed measured")
    _add_config(p)
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (default: random weights)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument(
        "--dtype",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="inference precision (bf16 / fp16 run under autocast)",
    )
    p.add_argument("--compile", action="store_true", help="time the model after torch.compile")
    p.add_argument("--peer", action="store_true", help="also measure torchvision's Mask R-CNN")
    p.add_argument("--iters", type=POSITIVE, default=50, help="timed iterations (or real images) per row")
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="directory of real images, timed in turn (default: one synthetic 640x427 image)",
    )
    p.add_argument("--train", action="store_true", help="also time a training step at 2 images")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)

    p = sub.add_parser("export", help="export the static parts: torch.export archives (.pt2) and ONNX files")
    _add_config(p)
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (default: random weights)")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder: features, bbox_head<i> and mask_head<i> as .pt2 and/or .onnx files",
    )
    p.add_argument(
        "--format",
        choices=("all", "torch", "onnx"),
        default="all",
        help="torch: torch.export archives (torch.export.load); onnx: ONNX files; all: both",
    )
    p.add_argument(
        "--height",
        type=_number(int, low=32, multiple=32),
        default=800,
        help="padded input height of the features part (a multiple of 32)",
    )
    p.add_argument(
        "--width",
        type=_number(int, low=32, multiple=32),
        default=1216,
        help="padded input width of the features part (a multiple of 32)",
    )

    p = sub.add_parser("demo", help="generate the embedded dataset, train, evaluate, visualise")
    p.add_argument(
        "--work-dir", type=Path, default=Path("demo_out"), help="folder for the data, checkpoints and drawings"
    )
    _add_overrides(p)
    for command in sub.choices.values():  # --debug after the command name works too
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="show an error's traceback instead of its one line",
        )
    return parser


def _export_folder(path: Path) -> Path:
    if path.suffix in (".onnx", ".pt2"):
        raise UserError(f"{path}: is a file name; give a folder (one file per part)")
    return check_output_dir(path)


OUTPUTS: dict[str, tuple[tuple[str, str, Callable[[Path], Path]], ...]] = {  # command -> (flag, attribute, check)
    "predict": (("--out", "out", check_output_dir),),
    "test": (("--out", "out", check_output_file), ("--report", "report", check_output_dir)),
    "export": (("--out", "out", _export_folder),),
    "browse": (("--out", "out", check_output_dir),),
    "train": (("--work-dir", "work_dir", check_output_dir),),
    "demo": (("--work-dir", "work_dir", check_output_dir),),
}


def _check_before_work(args: argparse.Namespace) -> None:
    """The device and the output paths, before any model loads or image is read."""
    if getattr(args, "device", None):
        default_device(args.device)
    for flag, attr, check in OUTPUTS.get(args.command, ()):
        if getattr(args, attr, None) is not None:
            try:
                check(getattr(args, attr))
            except UserError as err:
                raise UserError(f"{flag} {err}") from None


def _user_message(err: BaseException) -> str | None:
    """The one line for an error the user can fix; None for a crash of our own (its traceback shows)."""
    if isinstance(err, USER_ERRORS):
        return str(err)
    if isinstance(err, OSError) and is_user_os_error(err):
        return describe_os_error(err)
    return None


def _quiet_closed_stdout() -> None:
    """After the reader of stdout went away: point stdout at /dev/null, so that the interpreter's
    last flush does not print a BrokenPipeError of its own."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Run one command; see EXIT_CODES for what the exit code says."""
    try:
        args = _build_parser().parse_args(argv)
    except SystemExit as done:  # --help, --version, or a usage error (printed as one line)
        return done.code if isinstance(done.code, int) else EXIT_ERROR
    try:
        _check_before_work(args)
        status = int(COMMANDS[args.command](args) or 0)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        _quiet_closed_stdout()
        return EXIT_CLOSED_PIPE
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"gcnet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        message = _user_message(err)
        if message is None or args.debug:
            raise
        print(f"gcnet {args.command}: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
