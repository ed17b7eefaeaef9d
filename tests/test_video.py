"""gcnet predict on videos: an annotated video at the input's rate and size, per-frame COCO json,
frames/s, a stream that breaks off midway, and the missing extra; gcnet.video.frames in Python."""

from __future__ import annotations

import json
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from gcnet.checkpoint import save_checkpoint
from gcnet.cli import main
from gcnet.config import config_to_dict
from gcnet.inference import predict
from gcnet.video import frames
from tiny_models import tiny_config, tiny_detector

av = pytest.importorskip("av")
pycoco = pytest.importorskip("pycocotools.coco")


def _write_video(path: Path, count: int = 8, size: tuple[int, int] = (64, 48), fps: int = 10, noise: bool = False):
    """``count`` frames of a red square moving right over a grey (or noisy) background."""
    rng = np.random.default_rng(0)
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4" if path.suffix == ".avi" else "libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            rgb = np.full((height, width, 3), 90, np.uint8)
            if noise:
                rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            rgb[12:32, 3 * i : 3 * i + 20] = (230, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def _decoded(path: Path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], stream.average_rate


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config()
    model = tiny_detector()
    with torch.no_grad():  # confident enough that frames have detections to draw and record
        model.roi_head.bbox_head.fc_cls.bias[:-1] += 3.0
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    return save_checkpoint(path, model, meta={"config": config_to_dict(cfg), "class_names": list(cfg.class_names)})


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_predict_video_writes_an_annotated_video_and_per_frame_json(ckpt, tmp_path, capsys, suffix) -> None:
    clip = _write_video(tmp_path / f"clip{suffix}")
    out = tmp_path / "out"
    argv = ["predict", str(ckpt), str(clip), "--out", str(out), "--score-thr", "0", "--batch-size", "4"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "8 frames" in printed.out and "frames/s" in printed.out and "frame" in printed.err  # the bar
    drawn, rate = _decoded(out / clip.name)
    inputs, _ = _decoded(clip)
    assert len(drawn) == 8 and rate == 10 and drawn[0].shape == (48, 64, 3)
    assert any(np.abs(d.astype(int) - i.astype(int)).mean() > 2 for d, i in zip(drawn, inputs))  # drawn on
    header = json.loads((out / "clip.images.json").read_text())
    assert [(im["id"], im["frame"]) for im in header["images"]] == [(i + 1, i) for i in range(8)]
    assert [im["time"] for im in header["images"]] == pytest.approx([i / 10 for i in range(8)])
    assert {(im["width"], im["height"], im["video"]) for im in header["images"]} == {(64, 48, clip.name)}
    coco = pycoco.COCO(str(out / "clip.images.json"))
    results = coco.loadRes(str(out / "clip.detections.json"))
    assert len(results.getImgIds()) == 8 and len(results.getAnnIds()) > 0
    assert not (out / "detections.json").exists()  # no images given: no image jsons


def test_a_video_that_breaks_off_keeps_the_frames_before_it(ckpt, tmp_path, capsys) -> None:
    clip = _write_video(tmp_path / "noisy.mp4", count=16, noise=True)
    data = bytearray(clip.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 2000] = bytes(2000)  # a damaged stretch mid-stream
    clip.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert main(["predict", str(ckpt), str(clip), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{clip}: cannot decode video after" in err and "Traceback" not in err
    done = len(json.loads((out / "noisy.images.json").read_text())["images"])
    assert 0 < done < 16 and len(_decoded(out / "noisy.mp4")[0]) == done


def test_a_video_cut_short_says_so(ckpt, tmp_path, capsys) -> None:
    clip = _write_video(tmp_path / "cut.avi", count=16, noise=True)  # avi: the header counts the frames
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
    assert main(["predict", str(ckpt), str(clip), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    done = len(json.loads((tmp_path / "out" / "cut.images.json").read_text())["images"])
    assert 0 < done < 16 and f"{clip}: video ended after {done} of the 16 frame(s)" in err


def test_unreadable_videos_and_a_missing_pyav_are_one_line(ckpt, tmp_path, capsys, monkeypatch) -> None:
    (tmp_path / "junk.mkv").write_bytes(b"not a video")
    assert main(["predict", str(ckpt), str(tmp_path / "junk.mkv"), "--out", str(tmp_path / "out")]) == 2
    assert "junk.mkv: cannot read video" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
    monkeypatch.setitem(sys.modules, "av", None)  # as if not installed
    assert main(["predict", str(ckpt), str(tmp_path / "junk.mkv"), "--out", str(tmp_path / "out")]) == 2
    assert "pip install 'gcnet[video]'" in capsys.readouterr().err


def test_frames_stream_through_predict(tmp_path) -> None:
    clip = _write_video(tmp_path / "clip.mkv", count=5)
    model = tiny_detector()
    dets = list(predict(model, frames(clip), tiny_config().data, stream=True))
    assert len(dets) == 5 and all(d.image is not None and d.image.shape == (48, 64, 3) for d in dets)
