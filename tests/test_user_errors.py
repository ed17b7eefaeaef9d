"""A user's mistakes and real-world files through the CLI: checked before the work, one line each
(`gcnet <cmd>: error: ...`, exit code 2, no traceback), and nothing already written is lost.

Read-only folders are simulated where chmod does not bind (root), full disks by the free space the
check reads or by the write raising ENOSPC, missing CUDA by torch.cuda reporting none.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import gcnet.evaluation.runner
import gcnet.inference
import gcnet.paths
from gcnet.checkpoint import save_checkpoint
from gcnet.cli import _build_parser, _user_message, main
from gcnet.config import COCO_CLASSES, config_to_dict, with_class_names
from gcnet.data import CocoDetection, DatasetError, build_loader, make_synthetic_coco
from gcnet.data.config import DataConfig
from gcnet.errors import UserError
from gcnet.inference import COCO_CATEGORY_IDS, category_ids
from gcnet.models.detector import TwoStageDetector
from tiny_models import tiny_config

pycocotools = pytest.importorskip("pycocotools.coco")


# ---- fixtures and helpers ------------------------------------------------------------------------


def _checkpoint(path: Path, class_names: tuple[str, ...] | None = None) -> Path:
    """A tiny detector that finds something in any image, saved with its config (a gcnet file)."""
    cfg = tiny_config()
    if class_names is not None:
        cfg = with_class_names(cfg, class_names)
    torch.manual_seed(0)
    model = TwoStageDetector(cfg.model, cfg.class_names).eval()
    with torch.no_grad():
        bias = model.roi_head.bbox_head.fc_cls.bias
        bias[:-1] += 3.0
        bias[0] += 4.0  # one class stands out even among 80
    return save_checkpoint(path, model, meta={"config": config_to_dict(cfg), "class_names": list(cfg.class_names)})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_synthetic_coco(
        tmp_path_factory.mktemp("coco") / "data", num_train=2, num_val=3, image_size=(64, 64), seed=1
    )


@pytest.fixture
def coco(pristine: dict[str, str], tmp_path: Path) -> dict[str, Path]:
    """A fresh copy of the small COCO set (tests damage it)."""
    root = Path(pristine["root"])
    shutil.copytree(root, tmp_path / "data")
    return {k: tmp_path / "data" / Path(v).relative_to(root) for k, v in pristine.items() if k != "root"}


def _image(path: Path, size: tuple[int, int] = (48, 64), seed: int = 0) -> Path:
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _truncate(path: Path) -> Path:
    """Keep the header, lose the pixels: found only when the image is decoded."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _error_line(err: str, command: str, *names: object) -> str:
    """The one error line of ``err`` (progress bars aside), naming each of ``names``."""
    lines = [line for line in re.split(r"[\r\n]", err) if "error:" in line]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"gcnet {command}: error: ") and "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], lines[0]
    return lines[0]


def _warnings(err: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]", err) if ": warning: " in line]


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``folder`` refuses new files: chmod where it binds, else (root) the EROFS a read-only mount gives."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkstemp

    def refuse(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, 10 << 30, 0))  # type: ignore[attr-defined]


def _predict(ckpt: Path, out: Path, *images: Path, extra: tuple[str, ...] = ()) -> int:
    return main(["predict", str(ckpt), *map(str, images), "--out", str(out), "--score-thr", "0", *extra])


def _test(ckpt: Path, coco: dict[str, Path], *extra: str) -> int:
    return main(["test", str(ckpt), "--data", str(coco["val_ann"]), "--images", str(coco["val_images"]), *extra])


# ---- output paths, checked before the work ---------------------------------------------------------


def test_predict_out_that_is_a_file(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "preds"
    out.write_text("my notes")
    assert _predict(ckpt, out, _image(tmp_path / "a.png")) == 2
    _error_line(capsys.readouterr().err, "predict", "--out", out, "not a directory")
    assert out.read_text() == "my notes"


def test_predict_out_below_a_file(ckpt, tmp_path, capsys) -> None:
    (tmp_path / "notes").write_text("x")
    assert _predict(ckpt, tmp_path / "notes" / "preds", _image(tmp_path / "a.png")) == 2
    _error_line(capsys.readouterr().err, "predict", tmp_path / "notes", "is a file")


def test_predict_out_read_only_keeps_the_earlier_results(ckpt, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "preds"
    out.mkdir()
    (out / "detections.json").write_text("[]")
    _read_only(out, monkeypatch)
    assert _predict(ckpt, out, _image(tmp_path / "a.png")) == 2
    _error_line(capsys.readouterr().err, "predict", out, "cannot write")
    assert (out / "detections.json").read_text() == "[]" and not (out / "a.png").exists()


def test_predict_out_on_a_full_disk(ckpt, tmp_path, capsys, monkeypatch) -> None:
    _disk_full(monkeypatch)
    assert _predict(ckpt, tmp_path / "preds", _image(tmp_path / "a.png")) == 2
    _error_line(capsys.readouterr().err, "predict", tmp_path / "preds", "no space left")
    assert not (tmp_path / "preds").exists()


def test_predict_out_without_permission(ckpt, tmp_path, capsys, monkeypatch) -> None:
    def denied(*args: Any, dir: Any = None, **kwargs: Any) -> Any:
        raise OSError(errno.EACCES, os.strerror(errno.EACCES), str(dir))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert _predict(ckpt, tmp_path / "preds", _image(tmp_path / "a.png")) == 2
    _error_line(capsys.readouterr().err, "predict", tmp_path / "preds", "Permission denied")


def test_test_out_that_is_a_directory_fails_before_inference(ckpt, coco, tmp_path, capsys) -> None:
    (tmp_path / "results").mkdir()
    assert _test(ckpt, coco, "--out", str(tmp_path / "results")) == 2
    captured = capsys.readouterr()
    _error_line(captured.err, "test", tmp_path / "results", "is a directory")
    assert "%|" not in captured.err and captured.out == ""  # no progress bar, no metrics: nothing ran


def test_test_out_read_only_fails_before_inference(ckpt, coco, tmp_path, capsys, monkeypatch) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    _read_only(folder, monkeypatch)
    assert _test(ckpt, coco, "--out", str(folder / "results.json")) == 2
    captured = capsys.readouterr()
    _error_line(captured.err, "test", folder / "results.json", "cannot write")
    assert captured.out == ""


def test_test_out_full_at_the_end_still_prints_the_metrics(ckpt, coco, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "results.json"
    out.write_text('"earlier"')

    def full(path: Any, write: Any, suffix: str = ".tmp") -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(gcnet.paths, "atomic_write", full)  # the disk filled during the inference
    assert _test(ckpt, coco, "--out", str(out)) == 2
    captured = capsys.readouterr()
    _error_line(captured.err, "test", out, "No space left on device")
    assert "Average Precision" in captured.out  # the metrics are not lost with the file
    assert out.read_text() == '"earlier"'


def test_train_work_dir_that_is_a_file(tmp_path, capsys) -> None:
    (tmp_path / "run").write_text("x")
    assert main(["train", "gcnet-demo", "--work-dir", str(tmp_path / "run")]) == 2
    _error_line(capsys.readouterr().err, "train", "--work-dir", tmp_path / "run", "not a directory")


def test_demo_work_dir_read_only(tmp_path, capsys, monkeypatch) -> None:
    _read_only(tmp_path, monkeypatch)
    assert main(["demo", "--work-dir", str(tmp_path / "demo")]) == 2
    _error_line(capsys.readouterr().err, "demo", tmp_path / "demo", "cannot write")


@pytest.mark.parametrize("name", ["model.onnx", "model.pt2"])
def test_export_out_that_names_a_file(ckpt, tmp_path, capsys, name) -> None:
    assert main(["export", str(ckpt), "--out", str(tmp_path / name), "--height", "96", "--width", "128"]) == 2
    _error_line(capsys.readouterr().err, "export", tmp_path / name, "give a folder")
    assert not (tmp_path / name).exists()


# ---- the device ----------------------------------------------------------------------------------


def test_device_cuda_without_cuda(ckpt, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _predict(ckpt, tmp_path / "preds", _image(tmp_path / "a.png"), extra=("--device", "cuda")) == 2
    _error_line(capsys.readouterr().err, "predict", "'cuda'", "CUDA is not available")
    assert not (tmp_path / "preds").exists()


def test_device_index_beyond_the_gpus(ckpt, coco, capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _test(ckpt, coco, "--device", "cuda:3") == 2
    _error_line(capsys.readouterr().err, "test", "'cuda:3'", "only 1 CUDA device")


def test_device_that_is_no_device(capsys) -> None:
    assert main(["bench", "gcnet-demo", "--device", "gpu0"]) == 2
    _error_line(capsys.readouterr().err, "bench", "'gpu0'", "not a device name")


# ---- dataset contents, checked at load -----------------------------------------------------------


def _edit_json(path: Path, edit: Any) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("command", ["test", "train"])
def test_category_without_a_name(ckpt, coco, tmp_path, capsys, command) -> None:
    _edit_json(coco["val_ann"], lambda d: d["categories"][1].pop("name"))
    argv = ["test", str(ckpt)] if command == "test" else ["train", "gcnet-demo", "--work-dir", str(tmp_path / "w")]
    argv += ["--data", str(coco["val_ann"]), "--images", str(coco["val_images"])]
    assert main(argv) == 2
    _error_line(capsys.readouterr().err, command, coco["val_ann"], "categories[1]", "'name'")


def test_width_that_is_not_a_number(ckpt, coco, capsys) -> None:
    _edit_json(coco["val_ann"], lambda d: d["images"][0].update(width="abc"))
    assert _test(ckpt, coco) == 2
    _error_line(capsys.readouterr().err, "test", coco["val_ann"], "images[0]", "'width'", "'abc'")


def test_bbox_that_holds_no_numbers(ckpt, coco, capsys) -> None:
    _edit_json(coco["val_ann"], lambda d: d["annotations"][0].update(bbox=[1, "x", 3, 4]))
    assert _test(ckpt, coco) == 2
    _error_line(capsys.readouterr().err, "test", coco["val_ann"], "annotations[0]", "bbox")


def test_missing_images_fail_before_the_model_loads(ckpt, coco, capsys) -> None:
    files = sorted(coco["val_images"].iterdir())
    for f in files[:2]:
        f.unlink()
    assert _test(ckpt, coco) == 2
    captured = capsys.readouterr()
    _error_line(captured.err, "test", files[0], "image file not found", "and 1 more of the 3 images")
    assert "%|" not in captured.err  # no inference started (no progress bar)


def test_a_file_that_is_no_image_fails_at_load(ckpt, coco, capsys) -> None:
    victim = sorted(coco["val_images"].iterdir())[1]
    victim.write_text("<html>404</html>")
    assert _test(ckpt, coco) == 2
    _error_line(capsys.readouterr().err, "test", victim, "not an image file")


def test_missing_image_folder(ckpt, coco, capsys) -> None:
    shutil.rmtree(coco["val_images"])
    assert _test(ckpt, coco) == 2
    _error_line(capsys.readouterr().err, "test", coco["val_images"], "image directory not found")


def test_training_image_of_another_size_fails_at_load(coco, tmp_path, capsys) -> None:
    victim = sorted(coco["train_images"].iterdir())[0]
    _image(victim, (40, 50))
    assert (
        main(
            [
                "train",
                "gcnet-demo",
                "--data",
                str(coco["train_ann"]),
                "--images",
                str(coco["train_images"]),
                "--work-dir",
                str(tmp_path / "work"),
            ]
        )
        == 2
    )
    _error_line(capsys.readouterr().err, "train", victim, "50x40", "64x64")


# ---- images that cannot be decoded, met during the work --------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_test_skips_an_undecodable_image_and_evaluates_the_rest(ckpt, coco, tmp_path, capsys, workers) -> None:
    victim = _truncate(sorted(coco["val_images"].iterdir())[1])
    out = tmp_path / "results.json"
    assert _test(ckpt, coco, "--out", str(out), "--set", f"data.workers_per_gpu={workers}") == 1
    captured = capsys.readouterr()
    warned = _warnings(captured.err)
    assert len(warned) == 2 and str(victim) in warned[0] and "cannot decode image" in warned[0]
    assert "skipped 1 of 3 image(s)" in warned[1] and "Traceback" not in captured.err
    assert "evaluated on 2 of 3 images" in captured.out and "Average Precision" in captured.out
    ids = {r["image_id"] for r in json.loads(out.read_text())}
    victim_id = next(
        im["id"] for im in json.loads(coco["val_ann"].read_text())["images"] if im["file_name"] == victim.name
    )
    assert ids and victim_id not in ids


def test_predict_skips_an_undecodable_image_and_writes_the_rest(ckpt, tmp_path, capsys) -> None:
    first, broken, last = (
        _image(tmp_path / "a.png"),
        _truncate(_image(tmp_path / "b.png", seed=1)),
        _image(tmp_path / "c.png", seed=2),
    )
    out = tmp_path / "preds"
    assert _predict(ckpt, out, first, broken, last) == 1
    warned = _warnings(capsys.readouterr().err)
    assert len(warned) == 2 and str(broken) in warned[0] and "skipped 1 of 3" in warned[1]
    header = json.loads((out / "images.json").read_text())
    assert [(im["id"], im["file_name"]) for im in header["images"]] == [(1, str(first)), (3, str(last))]
    assert (out / "a.png").is_file() and (out / "c.png").is_file() and not (out / "b.png").exists()
    assert len(pycocotools.COCO(str(out / "images.json")).loadRes(str(out / "detections.json")).anns) > 0


def test_predict_with_no_image_readable_is_an_error_after_writing(ckpt, tmp_path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "preds"
    assert _predict(ckpt, out, broken) == 2
    err = capsys.readouterr().err
    _error_line(err, "predict", "none of the 1 image(s)")
    assert str(broken) in _warnings(err)[0]
    assert json.loads((out / "detections.json").read_text()) == []


def test_training_stops_on_an_undecodable_image_with_one_line(coco, tmp_path, capsys) -> None:
    victim = _truncate(sorted(coco["train_images"].iterdir())[0])
    argv = [
        "train",
        "gcnet-demo",
        "--data",
        str(coco["train_ann"]),
        "--images",
        str(coco["train_images"]),
        "--work-dir",
        str(tmp_path / "work"),
        "--set",
        "train.epochs=1",
        "--set",
        "data.workers_per_gpu=0",
        "--set",
        "data.scale=(64, 64)",
    ]
    assert main(argv) == 2
    _error_line(capsys.readouterr().err, "train", victim, "cannot decode image")


def test_a_loader_worker_error_is_the_same_one_line(coco) -> None:
    """torch re-raises a worker's DatasetError with the worker's traceback as its text: cut back."""
    victim = _truncate(sorted(coco["train_images"].iterdir())[0])
    cfg = DataConfig(scale=(64, 64), workers_per_gpu=2, images_per_gpu=2)
    loader = build_loader(CocoDetection(coco["train_ann"], coco["train_images"], cfg, train=True), cfg, train=True)
    with pytest.raises(DatasetError) as info:
        for _ in loader:
            pass
    assert "\n" not in str(info.value) and str(info.value).startswith(f"{victim}: cannot decode image")
    assert "Traceback" in info.value.worker_traceback
    del loader


# ---- stops midway keep what was done -------------------------------------------------------------


def _breaks_on_second_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, error: BaseException) -> None:
    """``module.name`` works once, then raises ``error``: a stop midway."""
    real = getattr(module, name)
    calls = []

    def call(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, call)


def test_predict_disk_full_midway_names_the_file_and_keeps_the_rest(ckpt, tmp_path, capsys, monkeypatch) -> None:
    _breaks_on_second_call(
        monkeypatch, gcnet.inference, "save_visualisation", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    )  # a write without a file name
    out = tmp_path / "preds"
    assert _predict(ckpt, out, _image(tmp_path / "a.png"), _image(tmp_path / "b.png", seed=1)) == 2
    _error_line(capsys.readouterr().err, "predict", out / "b.png", "No space left on device")
    header = json.loads((out / "images.json").read_text())
    assert [im["id"] for im in header["images"]] == [1] and (out / "a.png").is_file()


def test_predict_interrupted_keeps_what_was_done(ckpt, tmp_path, capsys, monkeypatch) -> None:
    # the second image's detection is interrupted (Ctrl-C while the model runs)
    _breaks_on_second_call(monkeypatch, gcnet.inference._Run, "detect_images", KeyboardInterrupt())
    out = tmp_path / "preds"
    assert _predict(ckpt, out, _image(tmp_path / "a.png"), _image(tmp_path / "b.png", seed=1)) == 130
    assert "gcnet predict: interrupted" in capsys.readouterr().err
    assert [im["id"] for im in json.loads((out / "images.json").read_text())["images"]] == [1]
    assert json.loads((out / "detections.json").read_text())


def test_test_interrupted_writes_the_results_so_far(ckpt, coco, tmp_path, capsys, monkeypatch) -> None:
    _breaks_on_second_call(monkeypatch, gcnet.evaluation.runner, "detections_to_coco", KeyboardInterrupt())
    out = tmp_path / "results.json"
    assert _test(ckpt, coco, "--out", str(out)) == 130
    err = capsys.readouterr().err
    assert "gcnet test: interrupted" in err and f"{out}: the results of the images done so far" in err
    assert len({r["image_id"] for r in json.loads(out.read_text())}) == 1


def test_our_own_crash_shows_its_traceback_and_debug_shows_a_users(ckpt, tmp_path, monkeypatch) -> None:
    def bug(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug of ours")

    monkeypatch.setattr(gcnet.inference, "save_visualisation", bug)
    with pytest.raises(RuntimeError, match="a bug of ours"):
        _predict(ckpt, tmp_path / "preds", _image(tmp_path / "a.png"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        _predict(ckpt, tmp_path / "file", tmp_path / "a.png", extra=("--debug",))
    with pytest.raises(UserError, match="not a directory"):
        main(["--debug", "predict", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "file")])


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EEXIST, errno.EACCES, errno.ENOENT])
def test_file_system_errors_are_one_line_naming_the_file(code) -> None:
    message = _user_message(OSError(code, os.strerror(code), "/data/out/x.json"))
    assert message == f"/data/out/x.json: {os.strerror(code)}"
    assert _user_message(OSError(errno.EIO, os.strerror(errno.EIO), "x")) is None  # not the user's: traceback
    assert _user_message(ValueError("ours")) is None


# ---- the CLI itself ------------------------------------------------------------------------------


def test_a_closed_pipe_ends_quietly() -> None:
    """`gcnet zoo | head -1`: the reader goes away; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gcnet", "zoo", "--urls"], stdout=write, stderr=subprocess.PIPE, timeout=300
        )
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr.decode().strip() == ""


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert re.match(r"gcnet \d+\.\d+\.\d+", capsys.readouterr().out)


def test_a_usage_mistake_is_one_line(capsys) -> None:
    assert main(["test", "gcnet-demo", "--data", "a.json", "--images", "img", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gcnet test: error: argument --batch-size: 0 must be >= 1")


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.mark.parametrize("command", sorted(set(_subcommands()) - {"train"}))  # train's options: issue 12
def test_every_option_has_help(command) -> None:
    missing = [a.dest for a in _subcommands()[command]._actions if not a.help]
    assert missing == []


# ---- what predict and export write ---------------------------------------------------------------


def test_predict_writes_coco_results_with_the_original_category_ids(tmp_path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "coco80.pth", COCO_CLASSES)
    out = tmp_path / "preds"
    assert main(["predict", str(ckpt), str(_image(tmp_path / "a.png")), "--out", str(out), "--score-thr", "0.2"]) == 0
    results = json.loads((out / "detections.json").read_text())
    header = json.loads((out / "images.json").read_text())
    assert results and all(r["score"] >= 0.2 for r in results)  # the drawings' threshold, written alike
    assert {r["category_id"] for r in results} <= set(COCO_CATEGORY_IDS)
    names = {c["id"]: c["name"] for c in header["categories"]}
    assert names[1] == "person" and names[90] == "toothbrush" and 12 not in names
    loaded = pycocotools.COCO(str(out / "images.json")).loadRes(str(out / "detections.json"))
    assert len(loaded.anns) == len(results)
    assert category_ids(("a", "b", "c")) == [1, 2, 3]


def test_export_writes_torch_export_archives_and_onnx_and_prints_paths(ckpt, tmp_path, capsys) -> None:
    pytest.importorskip("onnx")
    out = tmp_path / "exported"
    assert main(["export", str(ckpt), "--out", str(out), "--height", "96", "--width", "128"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == sorted(
        f"{n}.{s}" for n in ("features", "bbox_head0", "mask_head0") for s in ("pt2", "onnx")
    )
    assert all(Path(p).is_file() and "PosixPath" not in p for p in printed)
    program = torch.export.load(out / "bbox_head0.pt2")
    assert program.module()(torch.randn(2, 32, 7, 7))[0].shape[0] == 2
