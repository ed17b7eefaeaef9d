"""gcnet.tiling against sahi's sliced prediction, one trained detector behind both.

    pip install sahi        # not a gcnet dependency: install it beside gcnet to run this
    python benchmarks/compare_sahi.py [--checkpoint demo_out/train/latest.pth] [--tile 160 --overlap 0.25]

Small objects in larger images: mosaics of ``--grid`` rows x columns of the held-out images of the
demo's shapes set (``gcnet demo`` writes the set and the checkpoint). A full-image pass sees each
mosaic shrunk to the detector's scale; the windows see it at that scale. Every detector pass is
computed once and shared, so the rows differ in the windows and the merge only:

- full image only;
- gcnet: the full image plus ``tile_windows``, merged by ``merge_tiles`` (NMS at IoU 0.5), with
  and without ``drop_cut`` first (what ``predict(tile=...)`` does by default);
- sahi ``get_sliced_prediction`` (standard + sliced prediction) with NMS/IOU 0.5, boxes only and
  with masks (sahi turns each mask into polygons), and with its default GREEDYNMM/IOS 0.5.

Prints bbox and segm AP (pycocotools, 100 detections per mosaic) and the seconds each row spends
after the detector (merging and writing COCO results).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sahi.models.base import DetectionModel
from sahi.predict import get_sliced_prediction
from sahi.prediction import ObjectPrediction
from sahi.slicing import get_slice_bboxes
from sahi.utils.cv import get_coco_segmentation_from_bool_mask

from gcnet.build import build
from gcnet.data import collate, load_image, preprocess
from gcnet.evaluation import detections_to_coco
from gcnet.structures import Detections
from gcnet.tiling import drop_cut, merge_tiles, tile_windows

MAX_DETS = 100


def mosaics(ann_file: Path, image_dir: Path, rows: int, cols: int) -> tuple[list[np.ndarray], COCO]:
    """The held-out images tiled ``rows`` x ``cols`` into mosaics, with their ground truth moved along."""
    val = COCO(str(ann_file))
    ids = sorted(val.getImgIds())
    per = rows * cols
    images: list[np.ndarray] = []
    infos: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for m in range(len(ids) // per):
        cells = [val.loadImgs(i)[0] for i in ids[m * per : (m + 1) * per]]
        h, w = cells[0]["height"], cells[0]["width"]
        if any((c["height"], c["width"]) != (h, w) for c in cells):
            raise SystemExit(f"{ann_file}: the mosaics need images of one size")
        canvas = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
        for k, info in enumerate(cells):
            r, c = divmod(k, cols)
            canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = load_image(image_dir / info["file_name"])
            for a in val.loadAnns(val.getAnnIds(imgIds=info["id"])):
                full = np.zeros(canvas.shape[:2], dtype=np.uint8)
                full[r * h : (r + 1) * h, c * w : (c + 1) * w] = val.annToMask(a)
                rle = mask_utils.encode(np.asfortranarray(full))
                rle["counts"] = rle["counts"].decode("ascii")
                x, y, bw, bh = a["bbox"]
                box = [x + c * w, y + r * h, bw, bh]
                anns.append(
                    {"id": len(anns) + 1, "image_id": m + 1, "category_id": a["category_id"], "iscrowd": 0}
                    | {"bbox": box, "area": float(full.sum()), "segmentation": rle}
                )
        images.append(canvas)
        infos.append({"id": m + 1, "height": canvas.shape[0], "width": canvas.shape[1], "file_name": f"{m}.png"})
    gt = COCO()
    gt.dataset = {"images": infos, "annotations": anns, "categories": val.loadCats(val.getCatIds())}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return images, gt


def average_precision(gt: COCO, results: list[dict[str, Any]], iou_type: str) -> float:
    if not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), iou_type)  # loadRes edits its input
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


class Passes:
    """The detector on an RGB array, each distinct input computed once."""

    def __init__(self, model: torch.nn.Module, data_cfg: Any) -> None:
        self.model, self.data_cfg = model, data_cfg
        self.cache: dict[tuple[tuple[int, ...], bytes], Detections] = {}
        self.seconds = 0.0

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray) -> Detections:
        key = (rgb.shape, rgb.tobytes())
        if key not in self.cache:
            start = time.perf_counter()
            batch = collate([(*preprocess(rgb, self.data_cfg), None)], size_divisor=self.data_cfg.size_divisor)
            self.cache[key] = self.model(batch.images, batch.metas)[0]
            self.seconds += time.perf_counter() - start
        return self.cache[key]


class SahiAdapter(DetectionModel):
    """sahi's view of the gcnet detector: ObjectPredictions from its Detections."""

    def __init__(self, passes: Passes, names: tuple[str, ...], with_masks: bool, confidence: float) -> None:
        self.passes, self.names, self.with_masks = passes, names, with_masks
        super().__init__(model=passes.model, confidence_threshold=confidence, device="cpu")

    def load_model(self) -> None:  # the model is given
        pass

    def set_model(self, model: Any, **kwargs: Any) -> None:
        self.model = model
        self.category_mapping = {str(i): n for i, n in enumerate(self.names)}

    def perform_inference(self, image: np.ndarray) -> None:
        self._original_predictions = self.passes(np.ascontiguousarray(image))

    def _create_object_prediction_list_from_original_predictions(
        self, shift_amount_list: Any = None, full_shape_list: Any = None
    ) -> None:
        shift = shift_amount_list or [0, 0]
        shift = shift[0] if isinstance(shift[0], list) else shift
        full = full_shape_list[0] if full_shape_list and isinstance(full_shape_list[0], list) else full_shape_list
        det: Detections = self._original_predictions
        masks = det.masks.full().numpy() if self.with_masks and det.masks is not None else None
        predictions = []
        for i in range(len(det)):
            score = float(det.scores[i])
            polygons = None if masks is None else get_coco_segmentation_from_bool_mask(masks[i])
            if score <= self.confidence_threshold or (masks is not None and not polygons):
                continue
            label = int(det.labels[i])
            predictions.append(
                ObjectPrediction(
                    bbox=det.boxes[i].tolist(),
                    segmentation=polygons,
                    category_id=label,
                    category_name=self.names[label],
                    shift_amount=shift,
                    score=score,
                    full_shape=full,
                )
            )
        self._object_prediction_list_per_image = [predictions]


def sahi_results(
    images: list[np.ndarray], adapter: SahiAdapter, args: argparse.Namespace, cat_ids: list[int], **merge: Any
) -> list[dict[str, Any]]:
    results = []
    for image_id, image in enumerate(images, 1):
        h, w = image.shape[:2]
        out = get_sliced_prediction(
            image,
            adapter,
            slice_height=args.tile,
            slice_width=args.tile,
            overlap_height_ratio=args.overlap,
            overlap_width_ratio=args.overlap,
            auto_slice_resolution=False,
            verbose=0,
            **merge,
        )
        best = sorted(out.object_prediction_list, key=lambda p: -float(p.score.value))[:MAX_DETS]
        for p in best:
            x0, y0, x1, y1 = p.bbox.to_xyxy()
            record = {"image_id": image_id, "category_id": cat_ids[p.category.id], "score": float(p.score.value)}
            record["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            if adapter.with_masks:
                rle = mask_utils.merge(mask_utils.frPyObjects(p.mask.segmentation, h, w))
                record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            results.append(record)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="demo_out/train/latest.pth")
    parser.add_argument("--data", type=Path, default=Path("demo_out/data/annotations/instances_val.json"))
    parser.add_argument("--images", type=Path, default=Path("demo_out/data/val"))
    parser.add_argument("--grid", type=int, nargs=2, default=(3, 4), metavar=("ROWS", "COLS"))
    parser.add_argument("--tile", type=int, default=160)
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()

    built = build(args.checkpoint, device="cpu")
    model, names = built.model.eval(), built.config.class_names
    images, gt = mosaics(args.data, args.images, *args.grid)
    cat_ids = sorted(gt.getCatIds())
    passes = Passes(model, built.config.data)
    h, w = images[0].shape[:2]
    windows = tile_windows(h, w, args.tile, args.overlap)
    sahi_windows = get_slice_bboxes(h, w, args.tile, args.tile, False, args.overlap, args.overlap)
    print(f"{len(images)} mosaics {w}x{h}, {len(gt.getAnnIds())} objects; detector scale {built.config.data.scale}")
    same = windows == [tuple(b) for b in sahi_windows]
    print(f"{len(windows)} windows of {args.tile} px per mosaic, the same as sahi's: {same}")

    def ours(drop: bool = False) -> list[dict[str, Any]]:
        merged = []
        for image in images:
            parts = [passes(image)] + [passes(np.ascontiguousarray(image[y0:y1, x0:x1])) for x0, y0, x1, y1 in windows]
            if drop:
                parts[1:] = [drop_cut(part, window, (h, w)) for part, window in zip(parts[1:], windows)]
            offsets = [(0, 0)] + [(x0, y0) for x0, y0, _, _ in windows]
            merged.append(merge_tiles(parts, offsets, (h, w), max_per_img=MAX_DETS))
        return detections_to_coco(merged, list(range(1, len(images) + 1)), cat_ids)

    ours()  # every detector pass, once
    print(f"{len(passes.cache)} detector passes, {passes.seconds:.1f} s (shared by every row)")
    nms = {"postprocess_type": "NMS", "postprocess_match_metric": "IOU", "postprocess_match_threshold": 0.5}
    greedy = {"force_postprocess_type": True}  # sahi's default GREEDYNMM/IOS 0.5, kept at a low threshold
    rows = {
        "full image only": lambda: detections_to_coco(
            [passes(im) for im in images], list(range(1, len(images) + 1)), cat_ids
        ),
        "gcnet: full image + windows, NMS IoU 0.5": ours,
        "gcnet: the same, cut objects dropped (default)": lambda: ours(drop=True),
        "sahi: NMS IOU 0.5, boxes only": lambda: sahi_results(
            images, SahiAdapter(passes, names, False, 0), args, cat_ids, **nms
        ),
        "sahi: NMS IOU 0.5, masks": lambda: sahi_results(
            images, SahiAdapter(passes, names, True, 0), args, cat_ids, **nms
        ),
        "sahi: default GREEDYNMM IOS 0.5, masks": lambda: sahi_results(
            images, SahiAdapter(passes, names, True, 0.05), args, cat_ids, **greedy
        ),
    }

    def same_detections(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
        """The same detections: image, class, score (1e-6) and box (1e-3 px), in score order."""
        a, b = (sorted(r, key=lambda d: (d["image_id"], -d["score"])) for r in (a, b))
        return len(a) == len(b) and all(
            (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
            and abs(x["score"] - y["score"]) <= 1e-6
            and max(abs(u - v) for u, v in zip(x["bbox"], y["bbox"])) <= 1e-3
            for x, y in zip(a, b)
        )

    same_boxes = same_detections(ours(), rows["sahi: NMS IOU 0.5, boxes only"]())
    print(f"sahi's NMS/IOU boxes are gcnet's (image, class, score to 1e-6, box to 1e-3 px): {same_boxes}")
    print(f"| {'merge':48s} | bbox AP | segm AP | detections | s after the detector |")
    print(f"| {'---':48s} | --- | --- | --- | --- |")
    for name, run in rows.items():
        start = time.perf_counter()
        results = run()
        seconds = time.perf_counter() - start
        with_masks = all("segmentation" in r for r in results)
        segm = f"{average_precision(gt, results, 'segm'):.3f}" if with_masks else "-"
        bbox = average_precision(gt, results, "bbox")
        print(f"| {name:48s} | {bbox:.3f} | {segm} | {len(results)} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
