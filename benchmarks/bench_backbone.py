"""CPU latency of our R-50 backbone + FPN with and without GC (r4, c3-c5) vs torchvision's.

All three models run in the same process on the same input (default 1x3x800x1216), in eval
mode under ``no_grad``, round-robin per repeat (so load from other processes hits all of them
alike), after warm-up; the median of ``--repeats`` runs is reported. Appends a dated section to
``benchmarks/RESULTS.md`` unless ``--no-write``.

    python benchmarks/bench_backbone.py --repeats 9
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from gcnet.bench import cpu_model
from gcnet.config import BackboneConfig, FPNConfig
from gcnet.models.backbone import ResNet
from gcnet.models.neck import FPN

RESULTS = Path(__file__).with_name("RESULTS.md")


class BackboneFPN(nn.Module):
    """Our backbone followed by our FPN (what the detector's ``extract_features`` runs)."""

    def __init__(self, gc_ratio: float | None) -> None:
        super().__init__()
        self.backbone = ResNet(BackboneConfig(gc_ratio=gc_ratio, pretrained=None))
        self.neck = FPN(FPNConfig())

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.neck(self.backbone(x))


def time_models(
    models: dict[str, Callable[[Tensor], object]], x: Tensor, repeats: int, warmup: int, clock: str
) -> dict[str, list[float]]:
    """Milliseconds per forward for each model; models alternate within every repeat.

    ``clock="cpu"`` reads the process CPU time: on a shared machine it counts only this
    process's work (other jobs' load mostly inflates wall time), so ratios stay fair.
    """
    timer = time.process_time if clock == "cpu" else time.perf_counter
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in models.values():
                fn(x)
        for _ in range(repeats):
            for name, fn in models.items():
                start = timer()
                fn(x)
                times[name].append((timer() - start) * 1000.0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1216)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter latency; cpu: process CPU time (fairer on a shared machine)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only, do not append to RESULTS.md")
    parser.add_argument("--note", default="", help="free text added to the RESULTS.md section")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    tv = resnet_fpn_backbone(backbone_name="resnet50", weights=None).eval()
    models: dict[str, Callable[[Tensor], object]] = {
        "gcnet R-50 + FPN": BackboneFPN(None).eval(),
        "gcnet R-50 GC r4 c3-c5 + FPN": BackboneFPN(1 / 4).eval(),
        "torchvision resnet_fpn_backbone(resnet50)": tv,
    }
    x = torch.randn(1, 3, args.height, args.width)
    times = time_models(models, x, args.repeats, args.warmup, args.clock)
    med = {name: statistics.median(t) for name, t in times.items()}
    plain, gc, ref = (med[name] for name in models)

    lines = [
        f"## Backbone + FPN CPU latency ({dt.datetime.now().strftime('%Y-%m-%d %H:%M')})",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}; "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, Python {platform.python_version()}",
        f"- input 1x3x{args.height}x{args.width}, eval, inference_mode, fp32; {args.warmup} warm-up round(s), "
        f"median of {args.repeats} round-robin repeats; clock: {args.clock} "
        f"({'process CPU time' if args.clock == 'cpu' else 'wall-clock perf_counter'})",
        "- torchvision's model uses FrozenBatchNorm2d (its default); ours BatchNorm2d in eval mode.",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", f"| model | median ms ({args.clock}) | min ms | max ms |", "| --- | ---: | ---: | ---: |"]
    for name, t in times.items():
        lines.append(f"| {name} | {med[name]:.1f} | {min(t):.1f} | {max(t):.1f} |")
    lines += [
        "",
        f"- GC overhead (GC / plain): {gc / plain:.3f} (target <= 1.03)",
        f"- ours vs torchvision (plain / torchvision): {plain / ref:.3f} (target <= 1.00)",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        with RESULTS.open("a") as f:
            f.write(("\n" if RESULTS.exists() and RESULTS.stat().st_size else "") + text)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
