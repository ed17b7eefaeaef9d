"""`gcnet train | test | predict | bench | export | zoo | demo | browse | flops`: argument parsing and messages only.

Each command is a short adapter over a library call; models come from :mod:`gcnet.build`, so the
CLI accepts exactly what ``gcnet.build_detector`` accepts. Errors the user can fix print as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gcnet.bench import DEFAULT_IMAGE_SIZE, PEER_NAME, ROW_HEADER, format_row, run_bench
from gcnet.browse import browse, format_dataset_stats
from gcnet.build import build, check_source, default_device, resolve
from gcnet.checkpoint import CheckpointError
from gcnet.config import ConfigError
from gcnet.data import DatasetError
from gcnet.demo import run_demo
from gcnet.engine import NonFiniteLossError, TrainingStopped, init_distributed, teardown_distributed, train
from gcnet.errors import UserError
from gcnet.evaluation import evaluate_model
from gcnet.flops import count_flops, format_count, gc_overhead, plain_twin, zoo_columns
from gcnet.export import export_onnx
from gcnet.inference import expand_image_paths, predict_to_dir, to_rgb_array
from gcnet.report import summarise_test
from gcnet.report.writer import find_train_dir
from gcnet.zoo import ZOO
from gcnet.zoo_flops import ZOO_FLOPS

FAST_HELP = "inference mode: folded BN, channels-last, fastest CPU conv kernels (CPU: ~0.63x the time)"
SOURCE_HELP = ("a zoo config name (see `gcnet zoo`), `gcnet-demo`, or a checkpoint file gcnet wrote "
               "(it records its config and classes)")
CHECKPOINT_HELP = "weights: a path, an http(s) URL, a zoo config name, or `zoo` for the config's published file"


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
        raise UserError(f"{args.config} is a config, not a checkpoint file: give its weights with "
                        "--checkpoint (a file, a URL, or `zoo` for the published file)")


def cli_predict(args: argparse.Namespace) -> int:
    _weights_given(args)
    images = expand_image_paths(args.images)  # before the model loads: a typo fails at once
    built = build(args.config, args.checkpoint, overrides=args.overrides,
                  device=default_device(args.device), fast=args.fast)
    path = predict_to_dir(built.model, images, args.out, built.config.data, args.score_thr)
    print(f"wrote {len(images)} image(s) and {path}")
    return 0


def cli_test(args: argparse.Namespace) -> int:
    _weights_given(args)
    try:
        ctx = init_distributed(args.device)
    except ValueError as err:  # torchrun variables or --device that cannot work
        raise UserError(str(err)) from None
    try:
        built = build(args.config, args.checkpoint, overrides=args.overrides, device=ctx.device, fast=args.fast)
        out = args.out if args.out is not None or args.report is None else args.report / "results.json"
        stats = evaluate_model(built.model, args.data, args.images, built.config.data, args.batch_size, out)
        if stats:  # rank 0: per-class table, metrics json, report
            summarise_test(stats, args.data, args.images, out, args.report,
                           args.train_dir or find_train_dir(built.checkpoint), f"gcnet test: {built.config.name}")
    finally:
        teardown_distributed()
    return 0


def cli_train(args: argparse.Namespace) -> int:
    """Exit codes: 0 done (or stopped early by train.patience), 2 an error the user can fix (a
    NaN/inf loss too), 128 + signal (130 Ctrl-C, 143 SIGTERM) when a signal stopped the run after
    it saved latest.pth: `--resume` continues it."""
    cfg, _, _ = resolve(args.config, None, args.overrides)
    paths = {"train_ann": args.data, "train_images": args.images,
             "val_ann": args.val_data, "val_images": args.val_images}
    given = {k: str(v) for k, v in paths.items() if v is not None}
    train_cfg = cfg.train if args.load_from is None else dataclasses.replace(cfg.train, load_from=args.load_from)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **given), train=train_cfg)

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, list[float]]:
        return evaluate_model(model, cfg.data.val_ann, cfg.data.val_images, cfg.data)  # type: ignore[arg-type]

    evaluate_fn = evaluate if cfg.data.val_ann and cfg.data.val_images else None
    try:
        final = train(cfg, args.work_dir, resume=args.resume, device=args.device, evaluate_fn=evaluate_fn,
                      overwrite=args.overwrite)
    except TrainingStopped as stop:
        print(f"gcnet train: {stop}", file=sys.stderr)
        return stop.exit_code
    except (ValueError, NonFiniteLossError) as err:
        raise UserError(str(err)) from None
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
    results = run_bench(args.config, checkpoint=args.checkpoint, overrides=args.overrides, device=args.device,
                        dtype=args.dtype, compile=args.compile, iters=args.iters, peer=args.peer,
                        train=args.train, fast=args.fast, image_size=image_size)
    print(ROW_HEADER)
    for result in results:  # the peer's rows carry the peer's own name
        print(format_row(result, None if result.name == PEER_NAME else args.config))
    return 0


def cli_export(args: argparse.Namespace) -> int:
    built = build(args.config, args.checkpoint, overrides=args.overrides, device="cpu")
    written = export_onnx(built.model, args.out, (args.height, args.width))
    print(f"wrote {written}")
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
    size = tuple(args.size) if args.size else None
    count = count_flops(cfg, size)  # type: ignore[arg-type]
    overhead = None
    if cfg.model.backbone.gc_ratio is not None:
        overhead = gc_overhead(count, count_flops(plain_twin(cfg), size))  # type: ignore[arg-type]
    print(format_count(count, overhead))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "zoo": cli_zoo, "predict": cli_predict, "test": cli_test, "train": cli_train,
    "bench": cli_bench, "export": cli_export, "demo": cli_demo, "browse": cli_browse, "flops": cli_flops,
}


# ---- parser ------------------------------------------------------------------------------------


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set train.lr=0.01 "
                        "or --set model.roi.stages.1.pos_iou=0.65")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help=SOURCE_HELP)
    _add_overrides(p)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("zoo", help="list the published models with the seed's numbers")
    p.add_argument("--urls", action="store_true", help="also print checkpoint URLs")
    p.add_argument("--flops", action="store_true",
                   help="also print parameters, GFLOPs at 1333x800 and the GC blocks' share of them")

    p = sub.add_parser("browse", help="draw a COCO-format set's ground truth and print its statistics")
    p.add_argument("annotations", type=Path, help="COCO instances json")
    p.add_argument("--images", required=True, type=Path, help="image directory")
    p.add_argument("--out", required=True, type=Path, help="output folder: a PNG per image, index.html, stats.json")
    p.add_argument("--limit", type=int, default=None, help="draw only the first N images (by id; default: all)")

    p = sub.add_parser("flops", help="parameters and GFLOPs of backbone, neck and heads (torch's FlopCounterMode)")
    _add_config(p)
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="input image size (default: the config's test scale, 1333 800 for the zoo)")

    p = sub.add_parser("predict", help="detect objects in images, write PNGs and a COCO-style json")
    _add_config(p)
    p.add_argument("images", nargs="+", type=Path, help="image files and/or directories of images")
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (not needed when CONFIG is a checkpoint)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--score-thr", type=float, default=0.3, help="drawing threshold")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)

    p = sub.add_parser("test", help="COCO bbox + segm evaluation of a checkpoint")
    _add_config(p)
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write an HTML report there: per-class AP, PR curves, confusion matrix, failure images, "
                        "training curves (plots need matplotlib: pip install 'gcnet[report]')")
    p.add_argument("--train-dir", type=Path, default=None, metavar="DIR",
                   help="training work dir whose log.jsonl the report draws (default: the checkpoint's folder)")
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (not needed when CONFIG is a checkpoint)")
    p.add_argument("--data", required=True, type=Path, help="COCO instances json")
    p.add_argument("--images", required=True, type=Path, help="image directory")
    p.add_argument("--out", type=Path, default=None, help="write detections (COCO results json)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--fast", action="store_true", help=FAST_HELP)

    p = sub.add_parser("train", help="train a detector (torchrun for several GPUs)")
    _add_config(p)
    p.add_argument("--data", type=Path, default=None, help="train COCO instances json")
    p.add_argument("--images", type=Path, default=None, help="train image directory")
    p.add_argument("--val-data", type=Path, default=None)
    p.add_argument("--val-images", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/run"))
    p.add_argument("--load-from", default=None, metavar="SOURCE",
                   help="fine-tune: start from a trained model (path, URL, zoo name, or `zoo` for CONFIG's "
                        "published file); weights that fit load, the class layers start afresh "
                        "(= --set train.load_from=SOURCE)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir from its newest readable checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a --work-dir that holds checkpoints (deletes them and the logs)")
    p.add_argument("--device", default=None)

    p = sub.add_parser("bench", help="inference fps / memory and training step, as the seed measured")
    _add_config(p)
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (default: random weights)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peer", action="store_true", help="also measure torchvision's Mask R-CNN")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--images", type=Path, default=None,
                   help="directory of real images, timed in turn (default: one synthetic 640x427 image)")
    p.add_argument("--train", action="store_true", help="also time a training step at 2 images")
    p.add_argument("--fast", action="store_true", help=FAST_HELP)

    p = sub.add_parser("export", help="export to torch.export and ONNX")
    _add_config(p)
    p.add_argument("--checkpoint", default=None, help=CHECKPOINT_HELP + " (default: random weights)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1216)

    p = sub.add_parser("demo", help="generate the embedded dataset, train, evaluate, visualise")
    p.add_argument("--work-dir", type=Path, default=Path("demo_out"))
    _add_overrides(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except (UserError, DatasetError, CheckpointError, ConfigError) as err:  # they name the file and problem
        print(f"gcnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
