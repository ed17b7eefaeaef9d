"""Training logs on rank 0: a tqdm bar, ``log.jsonl`` and (when installed) TensorBoard scalars.

``log.jsonl`` holds one JSON object per logged iteration (epoch and iter 1-based, as the original's
``*.log.json``): ``epoch, iter, global_step, lr, loss, <each loss>, time, data_time`` and
``memory`` (MiB, peak CUDA allocation) on CUDA; and one per evaluation, ``"mode": "val"`` with
``epoch, global_step`` and the COCO numbers (``bbox_AP, bbox_AP50, ..., segm_ARl``), also written to
TensorBoard as ``val/<name>``. A resumed run first trims the records after its checkpoint's step,
so that the file holds each step once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from gcnet.checkpoint import atomic_write

LOG_FILE = "log.jsonl"


class TrainLogger:
    """Writes what the trainer reports; silent on ranks other than 0 (``enabled=False``)."""

    def __init__(
        self,
        work_dir: str | os.PathLike[str],
        total_iters: int,
        start_iter: int = 0,
        log_interval: int = 50,
        enabled: bool = True,
        progress: bool = True,
    ) -> None:
        if log_interval < 1:
            raise ValueError(f"train.log_interval must be >= 1, got {log_interval}")
        self.enabled = enabled
        self.log_interval = log_interval
        self.path = Path(work_dir) / LOG_FILE
        self._file = None
        self._bar: tqdm | None = None
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if start_iter > 0:
            trim_log(self.path, start_iter)
        self._file = open(self.path, "a", encoding="utf-8")
        if progress:
            self._bar = tqdm(total=total_iters, initial=start_iter, desc="train", dynamic_ncols=True)
        try:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events a killed run wrote after the checkpoint are dropped on reading
            self._tb = SummaryWriter(
                log_dir=str(Path(work_dir) / "tb"), purge_step=start_iter + 1 if start_iter > 0 else None
            )
        except ImportError:  # tensorboard is optional
            self._tb = None

    def should_log(self, global_step: int) -> bool:
        return global_step % self.log_interval == 0

    def step(self, record: dict[str, Any]) -> None:
        """Report one finished iteration; written to the files every ``log_interval`` steps."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(1)
            shown = {k: f"{v:.4g}" for k, v in record.items() if k == "loss" or k == "lr"}
            self._bar.set_postfix(shown, refresh=False)
        if not self.should_log(int(record["global_step"])):
            return
        assert self._file is not None
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(f"train/{key}", value, int(record["global_step"]))

    def metrics(self, epoch: int, global_step: int, values: dict[str, float]) -> None:
        """One evaluation's numbers: a ``"mode": "val"`` record and ``val/<name>`` scalars."""
        if not self.enabled:
            return
        assert self._file is not None
        record = {"mode": "val", "epoch": epoch, "global_step": global_step, **values}
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"val/{key}", value, global_step)
            self._tb.flush()

    def write(self, text: str) -> None:
        """A message that does not break the progress bar."""
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def trim_log(path: Path, last_step: int) -> None:
    """Keep the records of steps up to ``last_step`` (a resumed run writes the later ones again);
    a line cut short by a kill is dropped. Rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("global_step")
        except (ValueError, AttributeError):
            continue
        if isinstance(step, int) and step <= last_step:
            kept.append(line + "\n")
    data = "".join(kept).encode("utf-8")

    def write(f: IO[bytes]) -> None:
        f.write(data)

    atomic_write(path, write)
