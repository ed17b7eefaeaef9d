"""Training checkpoints: ``latest.pth`` / ``epoch_{n}.pth`` written atomically, plus RNG states.

Layout (written by ``gcnet.checkpoint.save_checkpoint``, the project's one writer): ``state_dict``
(the model's own keys, no ``module.``), ``meta`` (plain Python), and the trainer's extras
``optimizer``, ``scheduler``, ``grad_scaler``, ``rng`` (one entry per rank), ``epoch``, ``iter``,
``global_step``, ``config``.
Everything is tensors and plain containers, so ``torch.load(weights_only=True)`` reads it.
``best.pth`` (weights and meta, with ``meta["best"]``: metric, value, epoch) is the best evaluated
model for test / predict / fine-tuning; resume never reads it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gcnet.checkpoint import CheckpointError, atomic_copy, safe_torch_load, save_checkpoint

LATEST = "latest.pth"
BEST = "best.pth"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")
_TRAINING_KEYS = ("state_dict", "optimizer", "scheduler", "rng", "epoch", "iter")


@contextlib.contextmanager
def loader_signal_deferred() -> Iterator[None]:
    """Hold off the SIGCHLD handler while a checkpoint is written, then run it once if one came.

    torch's DataLoader raises from its SIGCHLD handler when a worker dies; landing inside
    ``torch.save`` that raise aborts the write and surfaces as a zip-writer error instead of the
    worker's death. Deferred, the file is written whole first, and the loader's error follows it.
    """
    sigchld = getattr(signal, "SIGCHLD", None)
    if sigchld is None or threading.current_thread() is not threading.main_thread():
        yield  # no SIGCHLD (Windows), or handlers can't be set off the main thread
        return
    arrived: list[Any] = []
    previous = signal.signal(sigchld, lambda signum, frame: arrived.append(frame))
    try:
        yield
    finally:
        signal.signal(sigchld, previous)
    if arrived and callable(previous):
        previous(sigchld, arrived[0])


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU) and CUDA generator states of this process, as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            raise RuntimeError(
                f"checkpoint holds {len(cuda_states)} CUDA RNG states, this machine has "
                f"{torch.cuda.device_count()} devices"
            )
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])


class Checkpointer:
    """Writes (on rank 0 only) and reads the trainer's checkpoints in ``work_dir``."""

    def __init__(self, work_dir: str | os.PathLike[str], is_main: bool = True) -> None:
        self.work_dir = Path(work_dir)
        self.is_main = is_main

    @property
    def latest(self) -> Path:
        return self.work_dir / LATEST

    @property
    def best(self) -> Path:
        return self.work_dir / BEST

    def epoch_path(self, epoch: int) -> Path:
        return self.work_dir / f"epoch_{epoch}.pth"

    def resume_candidates(self) -> list[Path]:
        """The files a resume may start from, newest first: ``latest.pth``, then ``epoch_N.pth`` by N."""
        epochs = sorted(
            ((int(m.group(1)), f) for f in self.work_dir.glob("epoch_*.pth") if (m := _EPOCH_FILE.match(f.name))),
            reverse=True,
        )
        latest = [self.latest] if self.latest.is_file() else []
        return latest + [f for _, f in epochs]

    def existing(self) -> list[Path]:
        """Every checkpoint this run would overwrite (its resume candidates and ``best.pth``)."""
        return self.resume_candidates() + ([self.best] if self.best.is_file() else [])

    def newest_readable(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest training checkpoint that reads back whole, skipping (with a warning) any that
        does not; None when there is none at all. Raises when there are some but none is readable,
        so that a resume never silently starts from scratch over earlier work."""
        skipped: list[tuple[Path, CheckpointError]] = []
        found = None
        for path in self.resume_candidates():
            try:
                found = path, self.load(path)
                break
            except CheckpointError as err:
                skipped.append((path, err))
        if len(skipped) == 1 and found is None:
            raise CheckpointError(f"resume: {skipped[0][1]}; --overwrite starts over")
        if self.is_main:
            for _, problem in skipped:
                print(f"resume: skipping {problem}", file=sys.stderr)
        if found is None and skipped:
            raise CheckpointError(
                f"resume: none of the checkpoints in {self.work_dir} reads back "
                f"({', '.join(p.name for p, _ in skipped)}; why: above); --overwrite starts over"
            )
        return found

    def save(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        extra: dict[str, Any],
        epoch_file: int | None = None,
    ) -> Path:
        """Write ``latest.pth`` (and ``epoch_{epoch_file}.pth``); returns the path written last.

        Each file appears complete or not at all (temporary file + rename), so a kill while
        saving leaves the previous good checkpoint in place.
        """
        target = self.latest if epoch_file is None else self.epoch_path(epoch_file)
        if not self.is_main:
            return target
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with loader_signal_deferred():
            save_checkpoint(target, model, meta, **extra)
            if epoch_file is not None:
                atomic_copy(target, self.latest)
        return target

    def save_best(self, model: nn.Module, meta: dict[str, Any]) -> Path:
        """Write ``best.pth`` (weights and ``meta``, atomically; rank 0 only)."""
        if self.is_main:
            with loader_signal_deferred():
                save_checkpoint(self.best, model, meta)
        return self.best

    def load(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Read a trainer checkpoint (default ``latest.pth``) onto the CPU, tensors and plain data
        only (``gcnet.checkpoint.safe_torch_load``: a missing or corrupt file raises
        :class:`CheckpointError` naming it, as does a file of weights only)."""
        path = Path(path) if path is not None else self.latest
        ckpt = safe_torch_load(path)
        missing = [k for k in _TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        if missing:
            raise CheckpointError(
                f"{path}: not a training checkpoint (no {', '.join(missing)}); to start "
                f"from a model's weights use --load-from (train.load_from) instead"
            )
        return ckpt
