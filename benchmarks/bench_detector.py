"""CPU latency per image: gcnet's GC Mask R-CNN R-50 vs torchvision's ``maskrcnn_resnet50_fpn``.

Both with random weights, on the same 800x1199 image (padded to 800x1216 by both), with the same
work forced: 1000 proposals per image and exactly 100 detections (every (RoI, class) pair enters
the class-wise NMS: ours ``score_thr = -1``, torchvision ``box_score_thresh = 0.0``). Timed like the
original's benchmark (synchronised forward + post-processing incl. mask pasting, pre-processing
outside the timer), in one process, alternating the two models run by run; medians of the repeats.

Usage: python benchmarks/bench_detector.py [--repeats 5] [--threads 1] [--ablation] [--profile] [--write]
Variants: ours and torchvision through ``gcnet.speed.prepare_for_inference`` (BN folded, NHWC,
1x1 convs on oneDNN, 3x3 convs on NNPACK's Winograd: the same generic tricks for both), torchvision
channels-last alone; ``--ablation`` adds ours with NHWC only, fold + NHWC, and the NCHW variant.
Latency is the process CPU time
(``os.times``) with 1 thread (robust on a shared machine), and wall time (use it with threads > 1).
``--write`` appends a dated subsection to benchmarks/RESULTS.md.
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
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision

from gcnet.bench import cpu_model, synthetic_input, torchvision_peer
from gcnet.config import Config, DataConfig
from gcnet.models.detector import TwoStageDetector
from gcnet.speed import cpu_time_s, prepare_for_inference
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


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall ms, process CPU ms) of one call. With one torch thread the CPU time (``os.times``) is
    the work done, much less sensitive than wall time to other jobs on a shared machine."""
    start, cpu = time.perf_counter(), cpu_time_s()
    fn()
    return (time.perf_counter() - start) * 1000.0, (cpu_time_s() - cpu) * 1000.0


def profile_top(fn: Callable[[], object], rows: int = 15) -> str:
    """Top ops by self CPU time of one call, as the profiler's table."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def build_runs(ours: torch.nn.Module, peer: torch.nn.Module, images, metas, raw, ablation: bool) -> dict:
    """name -> zero-argument call; the first two are the reference pair (ours eager, torchvision eager)."""
    ours_fast = prepare_for_inference(ours)
    peer_cl = copy.deepcopy(peer).to(memory_format=torch.channels_last)
    peer_fast = prepare_for_inference(peer)
    runs = {
        "gcnet": lambda: ours(images, metas),
        "torchvision": lambda: peer([raw]),
        "gcnet prepare_for_inference": lambda: ours_fast(images, metas),
        "torchvision channels-last": lambda: peer_cl([raw]),
        "torchvision prepare_for_inference": lambda: peer_fast([raw]),
    }
    if ablation:  # what each step buys: NHWC alone, + folded BN (kernels left to PyTorch), NHWC + fast convs
        ours_cl = prepare_for_inference(ours, fuse_bn=False, channels_last=True, fast_convs=False)
        ours_fold_cl = prepare_for_inference(ours, channels_last=True, fast_convs=False)
        ours_fold_fast_nchw = prepare_for_inference(ours, channels_last=False)
        runs["gcnet channels-last"] = lambda: ours_cl(images, metas)
        runs["gcnet fold-bn + channels-last"] = lambda: ours_fold_cl(images, metas)
        runs["gcnet fold-bn + fast convs, NCHW"] = lambda: ours_fold_fast_nchw(images, metas)
    return runs


def check_equal(ours: torch.nn.Module, images, metas) -> str:
    """Detections of the prepared model vs eager, matched per detection (random weights give many
    near-equal scores whose order float rounding may swap): same label multiset, and for every eager
    detection the closest prepared one of its label; max box / score difference over them."""
    with torch.inference_mode():
        ref = ours(images, metas)[0]
        out = prepare_for_inference(ours)(images, metas)[0]
    same = torch.equal(ref.labels.sort()[0], out.labels.sort()[0])
    diff = (ref.boxes[:, None] - out.boxes[None]).abs().amax(-1)
    diff = diff.masked_fill(ref.labels[:, None] != out.labels[None], float("inf"))
    box, j = diff.min(1)
    score = (ref.scores - out.scores[j]).abs().max().item()
    in_order = torch.equal(ref.labels, out.labels) and bool((ref.boxes - out.boxes).abs().max() <= 1e-3)
    return (
        f"prepared vs eager: same labels {same}, max |box diff| {box.max().item():.1e} px and "
        f"|score diff| {score:.1e} over matched detections (same order: {in_order})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", action="store_true", help="profile one forward of gcnet eager and prepared")
    parser.add_argument("--ablation", action="store_true", help="also time gcnet with NHWC only / fold + NHWC")
    parser.add_argument("--write", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours, cfg = build_ours()
    peer = build_peer(cfg.data)
    images, metas = synthetic_input(IMAGE, cfg.data)
    raw = torch.rand(3, *IMAGE, generator=torch.Generator().manual_seed(0))
    equality = check_equal(ours, images, metas)
    print(equality, flush=True)
    runs = build_runs(ours, peer, images, metas, raw, args.ablation)

    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu_times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        counts = {"gcnet": len(runs["gcnet"]()[0]), "torchvision": len(runs["torchvision"]()[0]["boxes"])}
        profiles = {}
        if args.profile:
            profiles = {k: profile_top(runs[k]) for k in ("gcnet", "gcnet prepare_for_inference")}
        names = list(runs)
        for r in range(args.repeats):  # rotate the order, so drifts in machine load hit all alike
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                wall, cpu = _time(runs[name])
                times[name].append(wall)
                cpu_times[name].append(cpu)
            print(
                f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in cpu_times.items()) + " (CPU ms)", flush=True
            )

    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    for k in runs:
        print(
            f"{k}: median {medians[k]:.0f} ms wall ({medians[k] / medians['torchvision']:.2f}x), "
            f"{cpu_medians[k]:.0f} ms CPU ({cpu_medians[k] / cpu_medians['torchvision']:.2f}x)"
        )
    for name, table in profiles.items():
        print(f"\n== profile {name} ==\n{table}")
    if args.write:
        write_section(args, times, cpu_times, counts, profiles, equality)


def write_section(args, times, cpu_times, counts, profiles, equality: str) -> None:
    medians = {k: statistics.median(v) for k, v in times.items()}
    cpu_medians = {k: statistics.median(v) for k, v in cpu_times.items()}
    base, cpu_base = medians["torchvision"], cpu_medians["torchvision"]
    clock = "CPU time (os.times, 1 thread)" if args.threads == 1 else "wall time (perf_counter)"
    lines = [
        "",
        f"### Detector run: {args.threads} thread(s), {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"- {platform.machine()} {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
        f"thread(s), shared machine (load average {os.getloadavg()[0]:.1f} at the end); Python "
        f"{platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}.",
        f"- `python benchmarks/bench_detector.py --repeats {args.repeats} --threads {args.threads}"
        f"{' --ablation' if args.ablation else ''} --write`; detections: gcnet {counts['gcnet']}, torchvision "
        f"{counts['torchvision']}; {equality}. Ratios use the {clock}.",
        "",
        "| model | median CPU ms | CPU ratio to torchvision | median wall ms | wall ratio | all CPU runs (ms) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, ms in medians.items():
        cpu = cpu_medians[name]
        lines.append(
            f"| {name} | {cpu:.0f} | {cpu / cpu_base:.2f}x | {ms:.0f} | {ms / base:.2f}x | "
            f"{[round(t) for t in cpu_times[name]]} |"
        )
    for name, table in profiles.items():
        lines += ["", f"Top ops by self CPU time, one forward of {name}:", "", "```", table.rstrip(), "```"]
    with RESULTS.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
