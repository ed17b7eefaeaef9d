"""Training checkpoints: ``latest.pth`` / ``epoch_{n}.pth`` written atomically, plus RNG states.

Layout (written by ``gcnet.checkpoint.save_checkpoint``, the project's one writer): ``state_dict``
(the model's own keys, no ``module.``), ``meta`` (plain Python), and the trainer's extras
``optimizer``, ``scheduler``, ``grad_scaler``, ``rng`` (one entry per rank), ``epoch``, ``iter``,
``global_step``, ``config``.
Everything is tensors and plain containers, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from gcnet.checkpoint import atomic_copy, safe_torch_load, save_checkpoint

LATEST = "latest.pth"


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

    def epoch_path(self, epoch: int) -> Path:
        return self.work_dir / f"epoch_{epoch}.pth"

    def save(
        self,
        model: nn.Module,
        meta: dict[str, Any],
        extra: dict[str, Any],
        epoch_file: Optional[int] = None,
    ) -> Path:
        """Write ``latest.pth`` (and ``epoch_{epoch_file}.pth``); returns the path written last.

        Each file appears complete or not at all (temporary file + rename), so a kill while
        saving leaves the previous good checkpoint in place.
        """
        target = self.latest if epoch_file is None else self.epoch_path(epoch_file)
        if not self.is_main:
            return target
        self.work_dir.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, model, meta, **extra)
        if epoch_file is not None:
            atomic_copy(target, self.latest)
        return target

    def load(self, path: Optional[str | os.PathLike[str]] = None) -> dict[str, Any]:
        """Read a trainer checkpoint (default ``latest.pth``) onto the CPU, tensors and plain data
        only (``gcnet.checkpoint.safe_torch_load``: a corrupt file raises naming it)."""
        path = Path(path) if path is not None else self.latest
        if not path.is_file():
            raise FileNotFoundError(f"resume: no checkpoint at {path}")
        ckpt = safe_torch_load(path)
        missing = [k for k in ("state_dict", "optimizer", "scheduler", "rng", "epoch", "iter")
                   if k not in ckpt]
        if missing:
            raise ValueError(f"resume: {path} is not a training checkpoint (missing {missing})")
        return ckpt
