"""COCO evaluation time: faster-coco-eval vs pycocotools on the same detections (bbox + segm).

python benchmarks/bench_eval.py [--images 200] [--dets 100]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from pycocotools import mask as mask_utils

from gcnet.data import make_synthetic_coco
from gcnet.evaluation import evaluate_coco, faster_available


def fake_results(gt: dict, dets_per_image: int, seed: int = 0) -> list[dict]:
    """Jittered copies of the GT plus random boxes, with RLE masks, ``dets_per_image`` per image."""
    rng = np.random.default_rng(seed)
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    results = []
    for img in gt["images"]:
        h, w = img["height"], img["width"]
        anns = by_image.get(img["id"], [])
        for k in range(dets_per_image):
            if k < len(anns):
                x, y, bw, bh = (np.array(anns[k]["bbox"]) + rng.normal(0, 1.5, 4)).tolist()
                cat = anns[k]["category_id"]
            else:
                bw, bh = rng.uniform(8, 60, 2)
                x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                cat = int(rng.integers(1, 6))
            m = np.zeros((h, w), np.uint8)
            x0, y0 = int(max(x, 0)), int(max(y, 0))
            m[y0 : int(y + bh) + 1, x0 : int(x + bw) + 1] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {
                    "image_id": img["id"],
                    "category_id": cat,
                    "bbox": [x, y, bw, bh],
                    "score": float(rng.uniform(0.05, 1.0)),
                    "segmentation": rle,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="/tmp/gcnet_bench_eval")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--dets", type=int, default=100)
    args = parser.parse_args()
    paths = make_synthetic_coco(args.root, num_train=0, num_val=args.images, image_size=(160, 160), seed=0)
    gt = json.loads(open(paths["val_ann"]).read())
    results = fake_results(gt, args.dets)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} GT, {len(results)} detections")
    times, stats = {}, {}
    for backend in ["pycocotools"] + (["faster"] if faster_available() else []):
        start = time.perf_counter()
        stats[backend] = evaluate_coco(paths["val_ann"], results, backend=backend, verbose=False)
        times[backend] = time.perf_counter() - start
        print(
            f"{backend}: {times[backend]:.2f} s  bbox AP {stats[backend]['bbox'][0]:.4f}  "
            f"segm AP {stats[backend]['segm'][0]:.4f}"
        )
    if "faster" in times:
        diff = max(abs(a - b) for t in ("bbox", "segm") for a, b in zip(stats["faster"][t], stats["pycocotools"][t]))
        print(
            f"speed-up faster-coco-eval / pycocotools: {times['pycocotools'] / times['faster']:.2f}x; "
            f"max stat diff {diff:.2e}"
        )


if __name__ == "__main__":
    main()
