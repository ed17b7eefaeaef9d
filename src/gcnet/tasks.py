"""The jobs behind the CLI (evaluate a model on COCO, predict into a folder, ...) as plain
functions, plus the ``cli_*`` adapters that turn parsed arguments into those calls."""

from __future__ import annotations

import argparse
import collections
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from gcnet.config import Config, ConfigError, DataConfig, apply_overrides, with_class_names


class UserError(Exception):
    """A problem the user can fix (bad config name, missing file, ...): printed without a trace."""


def resolve_config(name: str, overrides: Sequence[str] = ()) -> Config:
    """A zoo config name or ``gcnet-demo``, with ``--set`` overrides applied."""
    from gcnet.demo import DEMO_NAME, demo_config
    from gcnet.zoo import UnknownModelError, get_config

    try:
        cfg = demo_config() if name == DEMO_NAME else get_config(name)
        return apply_overrides(cfg, list(overrides))
    except (UnknownModelError, ConfigError) as err:
        raise UserError(str(err).strip("'\"")) from None


def default_device(device: str | None = None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(cfg: Config, checkpoint: str | None, device: torch.device, fast: bool = False) -> torch.nn.Module:
    """Build ``cfg``'s detector and load ``checkpoint`` (path, URL or zoo name) strictly; the
    checkpoint's own class names (if it records them) replace the config's. ``fast`` returns the
    inference mode of :func:`gcnet.speed.prepare_for_inference` (same detections up to rounding)."""
    from gcnet.checkpoint import CheckpointError, checkpoint_class_names, load_checkpoint
    from gcnet.models.detector import build_model

    try:
        names = checkpoint_class_names(checkpoint) if checkpoint is not None else None
    except (CheckpointError, FileNotFoundError) as err:
        raise UserError(str(err)) from None
    if names and names != cfg.class_names:
        cfg = with_class_names(cfg, names)
    model = build_model(cfg.model, cfg.class_names)
    if checkpoint is not None:
        try:
            load_checkpoint(model, checkpoint)
        except (CheckpointError, FileNotFoundError) as err:
            raise UserError(str(err)) from None
    model = model.to(device).eval()
    if fast:
        from gcnet.speed import prepare_for_inference

        model = prepare_for_inference(model)
    return model


@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    ann_file: str | Path,
    image_dir: str | Path,
    data_cfg: DataConfig = DataConfig(),
    batch_size: int = 1,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, list[float]]:
    """COCO bbox + segm AP of ``model`` on a COCO-format set (each rank takes a disjoint, unpadded
    shard when distributed; results gathered and evaluated once, on rank 0, which returns the
    stats; other ranks get {})."""
    import torch.distributed as dist

    from gcnet.data import CocoDetection, build_loader
    from gcnet.evaluation import detections_to_coco, evaluate_coco, gather_results

    distributed = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if distributed else 0
    dataset = CocoDetection(ann_file, image_dir, data_cfg, train=False)
    loader = build_loader(dataset, data_cfg, train=False, distributed=distributed, batch_size=batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    for batch in tqdm(loader, desc="test", disable=not progress or rank != 0, dynamic_ncols=True):
        batch = batch.to(device)
        detections = model(batch.images, batch.metas)
        ids = [int(m.image_id) for m in batch.metas]  # type: ignore[arg-type]
        results.extend(detections_to_coco(detections, ids, dataset.label_to_cat_id))
    model.train(was_training)
    results = gather_results(results)
    if rank != 0:
        return {}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results))
    iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) or not results else ("bbox",)
    return dict(evaluate_coco(str(ann_file), results, iou_types=iou_types))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def expand_image_paths(paths: Sequence[Path]) -> list[Path]:
    """Image files to predict on: files as given, directories as their image files (sorted, not
    recursive). Checked before any work starts, so a typo fails at once with the path named."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: directory has no image files ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such image file or directory")
    return files


def _output_names(paths: Sequence[Path]) -> list[str]:
    """One PNG name per image: its stem, made unique when two inputs share one (a/1.jpg, b/1.jpg)."""
    stems = [p.stem for p in paths]
    uses = collections.Counter(stems)
    return [f"{s}.png" if uses[s] == 1 else f"{s}_{i}.png" for i, s in enumerate(stems)]


def predict_to_dir(
    model: torch.nn.Module,
    images: Sequence[Path],
    out_dir: Path,
    data_cfg: DataConfig = DataConfig(),
    score_thr: float = 0.3,
) -> Path:
    """Write one PNG per image (masks, boxes, names, scores) and ``detections.json``; ``images``
    may name files and directories (see :func:`expand_image_paths`)."""
    from gcnet.evaluation import encode_masks
    from gcnet.inference import predict, to_rgb_array
    from gcnet.visualise import save_visualisation

    images = expand_image_paths(images)
    out_dir.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    names_out = _output_names(images)
    for index, path in enumerate(tqdm(images, desc="predict", dynamic_ncols=True)):
        rgb = to_rgb_array(path)
        det = predict(model, rgb, data_cfg)[0]
        save_visualisation(rgb, det, out_dir / names_out[index], score_thr)
        rles = encode_masks(det.masks) if det.masks is not None else [None] * len(det)
        names = det.label_names
        for k in range(len(det)):
            x1, y1, x2, y2 = det.boxes[k].tolist()
            item = {"image_id": index, "file_name": str(path), "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(det.scores[k]), "label": int(det.labels[k]), "category_name": names[k]}
            if rles[k] is not None:
                item["segmentation"] = rles[k]
            records.append(item)
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps(records))
    return json_path


# ---- CLI adapters -------------------------------------------------------------------------------

def cli_zoo(args: argparse.Namespace) -> int:
    from gcnet.zoo import ZOO

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:g}"

    print(f"{'config':<78} {'mem GB':>6} {'fps':>5} {'box AP':>6} {'mask AP':>7}")
    for name, e in ZOO.items():
        print(f"{name:<78} {num(e.mem_gb):>6} {num(e.fps):>5} {num(e.box_ap):>6} {num(e.mask_ap):>7}")
        if args.urls:
            print(f"    {e.url}")
    return 0


def cli_predict(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.config, args.overrides)
    images = expand_image_paths(args.images)  # before the model loads: a typo fails at once
    model = load_model(cfg, args.checkpoint, default_device(args.device), args.fast)
    path = predict_to_dir(model, images, args.out, cfg.data, args.score_thr)
    print(f"wrote {len(images)} image(s) and {path}")
    return 0


def cli_test(args: argparse.Namespace) -> int:
    from gcnet.data import DatasetError
    from gcnet.engine import init_distributed, teardown_distributed

    cfg = resolve_config(args.config, args.overrides)
    try:
        ctx = init_distributed(args.device)
    except ValueError as err:  # torchrun variables or --device that cannot work
        raise UserError(str(err)) from None
    try:
        model = load_model(cfg, args.checkpoint, ctx.device, args.fast)
        evaluate_model(model, args.data, args.images, cfg.data, args.batch_size, args.out)
    except DatasetError as err:
        raise UserError(str(err)) from None
    finally:
        teardown_distributed()
    return 0


def cli_train(args: argparse.Namespace) -> int:
    import dataclasses

    from gcnet.data import DatasetError
    from gcnet.engine import train

    cfg = resolve_config(args.config, args.overrides)
    paths = {"train_ann": args.data, "train_images": args.images,
             "val_ann": args.val_data, "val_images": args.val_images}
    given = {k: str(v) for k, v in paths.items() if v is not None}
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **given))
    try:
        cfg = with_dataset_classes(cfg)
    except DatasetError as err:
        raise UserError(str(err)) from None

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, list[float]]:
        return evaluate_model(model, cfg.data.val_ann, cfg.data.val_images, cfg.data)  # type: ignore[arg-type]

    evaluate_fn = evaluate if cfg.data.val_ann and cfg.data.val_images else None
    try:
        final = train(cfg, args.work_dir, resume=args.resume, device=args.device, evaluate_fn=evaluate_fn)
    except (DatasetError, ValueError) as err:
        raise UserError(str(err)) from None
    print(f"final checkpoint: {final}")
    return 0


def with_dataset_classes(cfg: Config) -> Config:
    """``cfg`` with the class names (and head size) of its training set's categories, sorted by
    id as the dataset maps them, so that own COCO-format data trains without editing a config."""
    from gcnet.data import read_coco_json

    if cfg.data.train_ann is None:
        return cfg
    categories = sorted(read_coco_json(cfg.data.train_ann)["categories"], key=lambda c: c["id"])
    names = tuple(str(c["name"]) for c in categories)
    if names == cfg.class_names:
        return cfg
    print(f"training on the {len(names)} categories of {cfg.data.train_ann} instead of the config's "
          f"{len(cfg.class_names)}")
    return with_class_names(cfg, names)


def cli_bench(args: argparse.Namespace) -> int:
    from gcnet.bench import DEFAULT_IMAGE_SIZE, ROW_HEADER, format_row, run_bench

    cfg = resolve_config(args.config, args.overrides)
    image_size: Any = DEFAULT_IMAGE_SIZE
    if args.images is not None:
        from gcnet.inference import to_rgb_array

        if args.peer or args.train:
            raise UserError("--images times real images for gcnet alone; --peer and --train use the synthetic size")
        image_size = [to_rgb_array(p) for p in expand_image_paths([args.images])[: args.iters]]
    results = run_bench(cfg, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                        compile=args.compile, iters=args.iters, peer=args.peer, train=args.train,
                        fast=args.fast, image_size=image_size)
    print(ROW_HEADER)
    for result in results:  # the peer's rows carry the peer's own name
        print(format_row(result, args.config if result.name == cfg.name else None))
    return 0


def cli_export(args: argparse.Namespace) -> int:
    from gcnet.export import export_onnx

    cfg = resolve_config(args.config, args.overrides)
    model = load_model(cfg, args.checkpoint, torch.device("cpu"))
    written = export_onnx(model, args.out, (args.height, args.width))
    print(f"wrote {written}")
    return 0


def cli_demo(args: argparse.Namespace) -> int:
    from gcnet.demo import run_demo

    start = time.perf_counter()
    summary = run_demo(args.work_dir, args.overrides)
    print(json.dumps(summary, indent=2))
    print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {args.work_dir}")
    return 0
