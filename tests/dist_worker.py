"""What the multi-process tests launch, under torchrun or directly (RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT set by the test): ``python dist_worker.py MODE DATA WORK [TIMEOUT_S]``.

``ddp``: test_ddp's Trainer run (tiny stand-in, SyncBN, accumulation; 1 image per rank and
micro-batch) into WORK/ddp, then ``train``. ``train``: ``gcnet.engine.train`` of the real tiny
detector on DATA into WORK/train, on CPU, ending as ``gcnet train`` does on a lost rank (its line,
exit code 75). ``GCNET_TEST_VICTIM=RANK:STEP:SIGNAL`` makes that rank send itself SIGKILL or
SIGSTOP right after that global step, on the first attempt only (torchrun's restarts run clean).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gcnet.config import Config  # noqa: E402
from gcnet.engine import RankLostError, Trainer, train  # noqa: E402
from gcnet.engine.distributed import init_distributed, restart_count, teardown_distributed  # noqa: E402
from test_trainer import real_tiny_config  # noqa: E402

torch.set_num_threads(1)


def train_config(data: Path, timeout_s: float = 60.0) -> Config:
    """12 images, 2 per rank: 3 iterations an epoch on 2 ranks, 2 epochs; latest.pth at step 4."""
    return real_tiny_config(data, num_train=12, epochs=2, checkpoint_every_iters=4, dist_timeout_s=timeout_s)


def _arm_victim() -> None:
    """Wrap the Trainer so that the victim rank signals itself after its step (a test-side hook)."""
    spec = os.environ.get("GCNET_TEST_VICTIM")
    if not spec or restart_count() > 0:
        return
    rank, step, name = spec.split(":")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    signum = getattr(signal, f"SIG{name}")
    original = Trainer.__init__

    def killer(trainer: Trainer, record: dict) -> None:
        if record["global_step"] == int(step):
            os.kill(os.getpid(), signum)

    def init_with_killer(self: Trainer, *args: object, **kwargs: object) -> None:
        kwargs["step_callback"] = killer
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    Trainer.__init__ = init_with_killer  # type: ignore[method-assign]


def main() -> int:
    mode, data, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    timeout_s = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    if mode == "ddp":  # a group of our own, which train() reuses and leaves to us to end
        from test_ddp import _trainer_run

        ctx = init_distributed("cpu")
        _trainer_run(work / "ddp", 1, ctx.rank, ctx.world_size)
    _arm_victim()
    try:
        train(train_config(data, timeout_s), work / "train", device="cpu")
    except RankLostError as lost:
        print(f"gcnet train: error: {lost}", file=sys.stderr)
        return lost.exit_code
    if mode == "ddp":
        teardown_distributed(barrier=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
