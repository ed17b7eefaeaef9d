"""CPU latency per image: gcnet's GC Mask R-CNN R-50 vs torchvision's ``maskrcnn_resnet50_fpn``.

Both with random weights, on the same 800x1199 image (padded to 800x1216 by both), with the same
work forced: 1000 proposals per image and exactly 100 detections (every (RoI, class) pair enters
the class-wise NMS: ours ``score_thr = -1``, torchvision ``box_score_thresh = 0.0``). Timed like the
original's benchmark (synchronised forward + post-processing incl. mask pasting, pre-processing
outside the timer), in one process, alternating the two models run by run; medians of the repeats.

Usage: python benchmarks/bench_detector.py [--repeats 7] [--threads N] [--no-profile] [--no-variants] [--write]
The variants (ours with BN folded + channels-last, torchvision channels-last) show the
optimisations available without touching the model code.
``--write`` appends a dated section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

from gcnet.bench import prepare_for_inference, synthetic_input, torchvision_peer
from gcnet.config import Config, DataConfig
from gcnet.models.detector import TwoStageDetector
from gcnet.zoo import get_config

CONFIG = "mask-rcnn_r50-gcb-r4-c3-c5_fpn_1x_coco"
IMAGE = (800, 1199)  # original (h, w): both pipelines keep it and pad to 800x1216
RESULTS = Path(__file__).with_name("RESULTS.md")


def build_ours() -> tuple[torch.nn.Module, Config]:
    cfg = get_config(CONFIG)
    roi = dataclasses.replace(cfg.model.roi, score_thr=-1.0, max_per_img=100)
    rpn = dataclasses.replace(cfg.model.rpn, test_nms_pre=1000, test_max_per_img=1000)
    backbone = dataclasses.replace(cfg.model.backbone, pretrained=None)
    model_cfg = dataclasses.replace(cfg.model, roi=roi, rpn=rpn, backbone=backbone)
    cfg = dataclasses.replace(cfg, model=model_cfg)
    return TwoStageDetector(cfg.model, cfg.class_names).eval(), cfg


def build_peer(data: DataConfig) -> torch.nn.Module:
    return torchvision_peer(num_classes=80, proposals=1000, detections=100, score_thresh=0.0, data=data).eval()


def _time(fn) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call. With one torch thread the CPU time is the work done,
    much less sensitive than wall time to other jobs on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - cpu) * 1000.0


def profile_top(fn, rows: int = 15) -> str:
    """Top ops by self CPU time of one call, as the profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--no-variants", action="store_true", help="skip the fused/channels-last variants")
    parser.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours, cfg = build_ours()
    peer = build_peer(cfg.data)
    images, metas = synthetic_input(IMAGE, cfg.data)
    raw = torch.rand(3, *IMAGE, generator=torch.Generator().manual_seed(0))
    runs = {"gcnet": lambda: ours(images, metas), "torchvision": lambda: peer([raw])}
    if not args.no_variants:
        ours_fast = prepare_for_inference(ours)
        peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
        runs["gcnet fused-bn + channels-last"] = lambda: ours_fast(images, metas)
        runs["torchvision channels-last"] = lambda: peer_cl([raw])

    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu_times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        counts = {"gcnet": len(runs["gcnet"]()[0]), "torchvision": len(runs["torchvision"]()[0]["boxes"])}
        profiles = {}
        if not args.no_profile:
            profiles = {"gcnet": profile_top(runs["gcnet"]), "torchvision": profile_top(runs["torchvision"])}
        names = list(runs)
        for r in range(args.repeats):  # rotate the order, so drifts in machine load hit all alike
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                wall, cpu = _time(runs[name])
                times[name].append(wall)
                cpu_times[name].append(cpu)
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in times.items()), flush=True)

    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    for k, v in medians.items():
        print(f"{k}: median {v:.0f} ms wall, {cpu_medians[k]:.0f} ms CPU")
    print(f"ratio gcnet/torchvision = {medians['gcnet'] / medians['torchvision']:.2f}x")
    for name, table in profiles.items():
        print(f"\n== profile {name} ==\n{table}")
    if args.write:
        write_section(args, times, medians, cpu_medians, counts, profiles)


def write_section(args, times, medians, cpu_medians, counts, profiles) -> None:
    base, cpu_base = medians["torchvision"], cpu_medians["torchvision"]
    lines = [
        "",
        f"## Detector CPU latency: gcnet GC R-50 Mask R-CNN vs torchvision ({datetime.date.today().isoformat()})",
        "",
        f"- Machine: {platform.machine()} {_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"torch threads, CPU shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); "
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}.",
        f"- `python benchmarks/bench_detector.py --repeats {args.repeats}"
        f"{f' --threads {args.threads}' if args.threads else ''}{' --no-profile' if args.no_profile else ''} --write`: `{CONFIG}` vs "
        "`maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)`, random weights, "
        "one 800x1199 image (both pad it to 800x1216), 1000 proposals and 100 detections forced on both "
        "(ours `score_thr=-1`, torchvision `box_score_thresh=0.0`), forward + post-processing incl. "
        "mask pasting into 800x1199; our normalisation/padding outside the timer (torchvision's "
        f"transform is inside its forward). Detections: gcnet {counts['gcnet']}, torchvision "
        f"{counts['torchvision']}. Same process, order rotated every repeat, medians:",
        "",
        "| model | median wall ms | wall ratio to torchvision | median CPU ms | CPU ratio | all wall runs (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, ms in medians.items():
        cpu = cpu_medians[name]
        lines.append(
            f"| {name} | {ms:.0f} | {ms / base:.2f}x | {cpu:.0f} | {cpu / cpu_base:.2f}x | "
            f"{[round(t) for t in times[name]]} |"
        )
    for name, table in profiles.items():
        lines += ["", f"Top ops by self CPU time, one forward of {name}:", "", "```", table.rstrip(), "```"]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
