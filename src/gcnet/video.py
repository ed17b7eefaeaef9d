"""Video in and out: frames decoded with PyAV (FFmpeg), predicted, drawn and encoded back into an
annotated video at the input's frame rate and size, with per-frame COCO results json.

PyAV is the optional extra ``gcnet[video]`` (torchvision's own video decoding is being retired);
it is imported only when a video is read, so images need nothing more. For Python::

    for det in gcnet.predict(model, gcnet.video.frames("clip.mp4"), stream=True):
        ...  # one Detections per frame, constant memory
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from gcnet.data import DatasetError
from gcnet.data.config import DataConfig
from gcnet.errors import UserError
from gcnet.inference import CocoWriter, output_names, predict
from gcnet.paths import check_output_dir, naming

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
DEFAULT_FPS = Fraction(25)  # for a stream that states no frame rate


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video by its suffix (mp4, avi, mov, mkv)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_av() -> ModuleType:
    """PyAV, or the one line that says how to install it."""
    try:
        import av
    except ImportError:
        raise UserError("reading videos needs PyAV: pip install 'gcnet[video]'") from None
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the header of a video file says: frame size, rate and count (None when not stated)."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int | None


def probe(path: str | Path) -> VideoInfo:
    """Open ``path`` and read its first video stream's header; an error naming the file when it
    is missing, not a video, or has no video stream (checked before any model loads)."""
    av = require_av()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such video file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            fps = stream.average_rate or stream.guessed_rate or DEFAULT_FPS
            return VideoInfo(
                path, stream.codec_context.width, stream.codec_context.height, Fraction(fps), stream.frames or None
            )
    except av.FFmpegError as err:
        raise UserError(f"{path}: cannot read video ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


def timed_frames(path: str | Path) -> Iterator[tuple[float, np.ndarray]]:
    """``(time in seconds, uint8 RGB HxWx3 frame)`` of ``path``'s first video stream, in order. A
    stream that cannot be decoded further raises :class:`DatasetError` naming the file and the
    frames read; the frames before it have been handed out."""
    av = require_av()
    done = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's frame threads
            for frame in container.decode(stream):
                seconds = float(frame.time) if frame.time is not None else done / float(DEFAULT_FPS)
                yield seconds, frame.to_ndarray(format="rgb24")
                done += 1
    except av.FFmpegError as err:
        raise DatasetError(f"{path}: cannot decode video after {done} frame(s) ({_reason(err)})") from None


def frames(path: str | Path) -> Iterator[np.ndarray]:
    """The uint8 RGB frames of ``path``, one at a time (see :func:`timed_frames`)."""
    for _, rgb in timed_frames(path):
        yield rgb


def _codec(suffix: str, width: int, height: int) -> str:
    """H.264 where the container holds it and the size is even (yuv420p halves both axes), else
    MPEG-4 part 2: both ship in PyAV's wheels and play in common players."""
    if suffix.lower() == ".avi" or width % 2 or height % 2:
        return "mpeg4"
    return "libx264"


@dataclass(frozen=True)
class VideoOutput:
    """What :func:`predict_video` wrote: the annotated video, its two jsons, the frames done, the
    seconds taken and the decoding problem that ended it early (None: read to the end)."""

    video: Path
    detections: Path
    images: Path
    frames: int
    seconds: float
    problem: str | None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def video_output_names(paths: list[Path]) -> list[str]:
    """The annotated video's file name per input video: its own name, numbered when two share one."""
    return output_names(paths, suffix=None)


def predict_video(
    model: torch.nn.Module,
    path: str | Path,
    out_dir: Path,
    data_cfg: DataConfig = DataConfig(),
    score_thr: float = 0.3,
    batch_size: int = 1,
    tile: int | None = None,
    tile_overlap: float = 0.2,
    tile_drop_cut: bool = True,
    name: str | None = None,
) -> VideoOutput:
    """Predict every frame of ``path`` into ``out_dir``: ``name`` (default: the input's file name)
    is the annotated video (same frame rate and size), ``<stem>.detections.json`` its COCO results
    and ``<stem>.images.json`` their header, one image per frame (``id`` = frame index + 1,
    ``frame``, ``time`` in seconds, ``file_name`` the input, ``width``, ``height``, ``video``).
    A stream that breaks off midway, or ends before the frame count its header states, ends the
    run with what was done written and the problem in :attr:`VideoOutput.problem`; a stop
    (Ctrl-C, a full disk) writes what was done too."""
    av = require_av()
    info = probe(path)
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or info.path.name
    target = out_dir / name
    stem = Path(name).stem
    coco = CocoWriter(model, out_dir / f"{stem}.detections.json", out_dir / f"{stem}.images.json")
    times: collections.deque[float] = collections.deque()

    def source() -> Iterator[np.ndarray]:
        for seconds, rgb in timed_frames(info.path):
            times.append(seconds)
            yield rgb

    problem = None
    start = time.perf_counter()
    with naming(target), av.open(str(target), "w") as container, coco.kept():
        stream: Any = container.add_stream(_codec(target.suffix, info.width, info.height), rate=info.fps)
        stream.width, stream.height, stream.pix_fmt = info.width, info.height, "yuv420p"
        bar = tqdm(total=info.frames, desc=info.path.name, unit="frame", dynamic_ncols=True)
        try:
            dets = predict(
                model,
                source(),
                data_cfg,
                batch_size,
                stream=True,
                tile=tile,
                tile_overlap=tile_overlap,
                tile_drop_cut=tile_drop_cut,
            )
            for index, det in enumerate(dets):
                det = det.filter(score_thr)
                drawn = av.VideoFrame.from_ndarray(det.plot(score_thr=score_thr), format="rgb24")  # on det.image
                container.mux(stream.encode(drawn))
                entry = {"id": index + 1, "file_name": str(info.path), "frame": index, "time": times.popleft()}
                coco.add(det, {**entry, "width": info.width, "height": info.height, "video": name})
                bar.update()
        except DatasetError as err:  # the frames before it are done: written below
            problem = str(err)
        except BaseException:  # a stop: keep the frames encoded so far, the stop stays the error
            with contextlib.suppress(Exception):
                container.mux(stream.encode(None))
            raise
        finally:
            bar.close()
        container.mux(stream.encode(None))  # the encoder's buffered frames
    done = len(coco.entries)
    if problem is None and info.frames and done < info.frames:  # FFmpeg reads a cut file to its cut quietly
        problem = f"{info.path}: video ended after {done} of the {info.frames} frame(s) its header states (cut short?)"
    written = coco.write()
    return VideoOutput(target, *written, done, time.perf_counter() - start, problem)
