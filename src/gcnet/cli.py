"""`gcnet train | test | predict | bench | export | zoo | demo`: a thin shell over library calls."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

FAST_HELP = "inference mode: folded BN, channels-last, fastest CPU conv kernels (CPU: ~0.63x the time)"


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a zoo config name (see `gcnet zoo`) or `gcnet-demo`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by dotted path, e.g. --set train.lr=0.01")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gcnet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("zoo", help="list the published models with the seed's numbers")
    p.add_argument("--urls", action="store_true", help="also print checkpoint URLs")

    p = sub.add_parser("predict", help="detect objects in images, write PNGs and a COCO-style json")
    _add_config(p)
    p.add_argument("images", nargs="+", type=Path, help="image files and/or directories of images")
    p.add_argument("--checkpoint", required=True, help="path, URL or zoo name")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--device", default=None)
    p.add_argument("--score-thr", type=float, default=0.3, help="drawing threshold")
    p.add_argument("--fast", action="store_true",
                   help=FAST_HELP)

    p = sub.add_parser("test", help="COCO bbox + segm evaluation of a checkpoint")
    _add_config(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, type=Path, help="COCO instances json")
    p.add_argument("--images", required=True, type=Path, help="image directory")
    p.add_argument("--out", type=Path, default=None, help="write detections (COCO results json)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--fast", action="store_true",
                   help=FAST_HELP)

    p = sub.add_parser("train", help="train a detector (torchrun for several GPUs)")
    _add_config(p)
    p.add_argument("--data", type=Path, default=None, help="train COCO instances json")
    p.add_argument("--images", type=Path, default=None, help="train image directory")
    p.add_argument("--val-data", type=Path, default=None)
    p.add_argument("--val-images", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/run"))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default=None)

    p = sub.add_parser("bench", help="inference fps / memory and training step, as the seed measured")
    _add_config(p)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--peer", action="store_true", help="also measure torchvision's Mask R-CNN")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--images", type=Path, default=None,
                   help="directory of real images, timed in turn (default: one synthetic 640x427 image)")
    p.add_argument("--train", action="store_true", help="also time a training step at 2 images")
    p.add_argument("--fast", action="store_true",
                   help=FAST_HELP)

    p = sub.add_parser("export", help="export to torch.export and ONNX")
    _add_config(p)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--height", type=int, default=800)
    p.add_argument("--width", type=int, default=1216)

    p = sub.add_parser("demo", help="generate the embedded dataset, train, evaluate, visualise")
    p.add_argument("--work-dir", type=Path, default=Path("demo_out"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    from gcnet import tasks
    from gcnet.checkpoint import CheckpointError
    from gcnet.data import DatasetError

    try:
        handler = getattr(tasks, f"cli_{args.command}")
        return int(handler(args) or 0)
    except (tasks.UserError, DatasetError, CheckpointError) as err:  # messages that name the file and problem
        print(f"gcnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
