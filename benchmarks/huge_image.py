"""Peak memory of predicting one huge photo: an 8000x6000 synthetic photo, the tiny demo model
(``gcnet-demo``, random weights, every score kept: 100 detections with masks), and the COCO
results json plus the drawing written, each run in a fresh process whose RSS high-water
(``ru_maxrss`` from ``os.wait4``) is the number.

Two workloads per code tree: ``api`` (``gcnet.build`` -> ``gcnet.predict`` with the model's own
test pipeline (160x160 for the demo: boxes of ~1100x560 px in the photo) -> ``detections_to_coco``
-> ``json.dump`` -> ``save_visualisation``: calls that exist before and after compact masks, so the
same script measures both) and ``cli`` (``gcnet predict`` end to end, which writes the same json
and drawing). "Before" is an older checkout's ``src`` given with
``--before-src``, e.g. the commit before compact masks::

    git worktree add --detach /tmp/gcnet-before 08afaf5
    python benchmarks/huge_image.py --before-src /tmp/gcnet-before/src

The photo, the checkpoint (random weights, seed 0, loaded by name + file so both trees build
the same model) and the outputs go to ``--work`` (default /tmp/gcnet_huge).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parents[1] / "src"
OVERRIDES = ("model.roi.score_thr=-1", "model.roi.max_per_img=100")  # keep every score, 100 per image


def make_photo(path: Path, width: int = 8000, height: int = 6000, shapes: int = 600, seed: int = 0) -> None:
    """A JPEG of many filled ellipses, boxes and triangles in random colours on a soft gradient."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = np.empty((height, width, 3), dtype=np.uint8)
    for c, (a, b) in enumerate(((90, 60), (120, -40), (150, 50))):
        base[..., c] = (a + b * ys + 0.6 * b * xs).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(base)
    del base
    draw = ImageDraw.Draw(image)
    for _ in range(shapes):
        size = float(rng.uniform(60, 1200))
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(0, 3))
        box = (x, y, x + size * float(rng.uniform(0.5, 1.5)), y + size)
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x, y + size), (x + size / 2, y), (x + size, y + size)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=90)


def make_checkpoint(path: Path) -> None:
    """Random gcnet-demo weights (seed 0) with the class names only: both trees read the same file."""
    import torch

    import gcnet
    from gcnet.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = gcnet.build_detector("gcnet-demo", device="cpu")
    save_checkpoint(path, model, {"class_names": list(model.class_names)})


def child_api(photo: Path, checkpoint: Path, out: Path) -> dict[str, object]:
    """The Python workload; what it returns is printed as one json line."""
    import torch

    import gcnet
    from gcnet.data import load_image
    from gcnet.evaluation import detections_to_coco
    from gcnet.inference import category_ids
    from gcnet.visualise import save_visualisation

    torch.manual_seed(0)
    start = time.perf_counter()
    built = gcnet.build("gcnet-demo", checkpoint, overrides=list(OVERRIDES), device="cpu")
    model = built.model
    [det] = gcnet.predict(model, photo, built.config.data)
    predicted = time.perf_counter()
    records = detections_to_coco([det], [1], category_ids(model.class_names))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "detections.json", "w", encoding="utf-8") as f:
        json.dump(records, f)
    save_visualisation(load_image(photo), det, out / "drawing.png", score_thr=0.0)
    return {
        "gcnet": gcnet.__file__,
        "detections": len(det),
        "masks": sum("segmentation" in r for r in records),
        "predict_s": round(predicted - start, 2),
        "total_s": round(time.perf_counter() - start, 2),
    }


def _measure(command: list[str], src: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stdout) of ``command`` run with ``src`` first on the path."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"huge_image: {' '.join(command)} exited with {proc.returncode}")
    return usage.ru_maxrss / 1024, seconds, stdout  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gcnet_huge"))
    parser.add_argument("--before-src", type=Path, default=None, help="an older checkout's src/ to compare with")
    parser.add_argument("--after-src", type=Path, default=HERE, help="the src/ measured as 'after' (this checkout's)")
    parser.add_argument("--only", choices=("api", "cli"), default=None, help="run one workload")
    parser.add_argument("--child", choices=("api",), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    photo, checkpoint = args.work / "photo.jpg", args.work / "demo_random.pth"
    if args.child:
        print(json.dumps(child_api(photo, checkpoint, args.child_out)))
        return
    if not photo.is_file():
        make_photo(photo)
    if not checkpoint.is_file():
        make_checkpoint(checkpoint)
    trees = [("before", args.before_src)] if args.before_src else []
    trees.append(("after", args.after_src))
    rows = []
    for label, src in trees:
        for mode in ("api", "cli") if args.only is None else (args.only,):
            if mode == "api":
                command = [sys.executable, __file__, "--work", str(args.work), "--child", "api"]
                command += ["--child-out", str(args.work / f"out_api_{label}")]
            else:
                out = args.work / f"out_cli_{label}"
                sets = [a for o in OVERRIDES for a in ("--set", o)]
                command = [sys.executable, "-m", "gcnet", "predict", "gcnet-demo", "--checkpoint", str(checkpoint)]
                command += [str(photo), "--out", str(out), "--score-thr", "0", "--device", "cpu", *sets]
            peak_mb, seconds, stdout = _measure(command, src)
            info = json.loads(stdout.strip().splitlines()[-1]) if mode == "api" else {}
            rows.append(
                {
                    "tree": label,
                    "src": str(src),
                    "mode": mode,
                    "peak_rss_mb": round(peak_mb),
                    "wall_s": round(seconds, 1),
                    **info,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    with open(args.work / "results.json", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    for mode in ("api", "cli"):
        peaks = {r["tree"]: r["peak_rss_mb"] for r in rows if r["mode"] == mode}
        if "before" in peaks and "after" in peaks:
            before, after = peaks["before"], peaks["after"]
            print(f"{mode}: peak {before} MB -> {after} MB ({before / after:.1f}x less)")


if __name__ == "__main__":
    main()
