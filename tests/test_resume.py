"""Exact resume after SIGKILL: a real (tiny) training run killed mid-epoch, after a checkpoint,
then resumed, logs the same losses as a run that was never interrupted.

Runs ``gcnet.engine.train`` (the real tiny detector on synthetic shapes, CPU, 0 or 2 loader workers,
one thread). The run to kill is a subprocess that SIGKILLs itself from a step callback, so the moment
is deterministic: checkpoint at step 5 (epoch 2, iteration 1), killed at the end of step 6. The
uninterrupted reference and the resumed run happen in this process (one slow start saved).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("gcnet.models.detector")
import gcnet  # noqa: E402
from gcnet.engine import train  # noqa: E402
from gcnet.evaluation import evaluate_model  # noqa: E402
from test_trainer import real_tiny_config  # noqa: E402

torch.set_num_threads(1)

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from test_trainer import real_tiny_config
    import gcnet.engine.trainer as trainer_mod
    from gcnet.engine import train

    data_root, work_dir, workers, dcn = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "dcn"
    original_init = trainer_mod.Trainer.__init__

    def killer(trainer, record):
        if record["global_step"] == 6:
            os.kill(os.getpid(), signal.SIGKILL)

    def init_with_killer(self, *args, **kwargs):
        kwargs["step_callback"] = killer
        original_init(self, *args, **kwargs)

    trainer_mod.Trainer.__init__ = init_with_killer
    cfg = real_tiny_config(data_root, num_train=8, workers=workers, dcn=dcn, epochs=2,
                           checkpoint_every_iters=5)
    train(cfg, work_dir, device="cpu")
    """
).format(tests=str(TESTS))


def _run_and_kill(script: Path, data: Path, work: Path, workers: int, dcn: bool) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(script), str(data), str(work), str(workers), "dcn" if dcn else "-"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _records(work: Path) -> list[dict]:
    rows = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("workers", "dcn"), [(0, False), (2, False), (0, True)], ids=["in-process", "2-workers", "dcn"]
)
def test_sigkill_mid_epoch_then_resume_gives_identical_losses(tmp_path: Path, workers: int, dcn: bool) -> None:
    """With loader workers too: random flips depend on (seed, epoch, index), not on the worker.
    The DCN variant (the zoo's dconv rows in small) is then tested from its final checkpoint."""
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    data = tmp_path / "data"

    cfg = real_tiny_config(data, num_train=8, workers=workers, dcn=dcn, epochs=2, checkpoint_every_iters=5)
    train(cfg, tmp_path / "full", device="cpu")
    reference = _records(tmp_path / "full")
    assert [r["global_step"] for r in reference] == list(range(1, 9))

    killed = _run_and_kill(script, data, tmp_path / "cut", workers, dcn)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = _records(tmp_path / "cut")
    assert [r["global_step"] for r in before] == list(range(1, 7))
    ckpt = torch.load(tmp_path / "cut" / "latest.pth", weights_only=True)
    assert (ckpt["epoch"], ckpt["iter"], ckpt["global_step"]) == (1, 1, 5)  # mid-epoch 2
    assert not (tmp_path / "cut" / "epoch_2.pth").exists()

    train(cfg, tmp_path / "cut", resume=True, device="cpu")
    after = _records(tmp_path / "cut")  # the killed run's step 6, past its checkpoint, logged once
    assert [r["global_step"] for r in after] == list(range(1, 9))
    assert after == reference  # exactly the same floats (losses, lr) as the uninterrupted run
    assert (tmp_path / "cut" / "epoch_2.pth").is_file()
    if dcn:
        model = gcnet.build_detector(cfg, checkpoint=str(tmp_path / "cut" / "epoch_2.pth"))
        assert any(k.endswith("conv2.conv_offset.weight") for k in model.state_dict())
        stats = evaluate_model(model, cfg.data.train_ann, cfg.data.train_images, cfg.data, progress=False)
        assert set(stats) == {"bbox", "segm"} and all(0.0 <= v[0] <= 1.0 for v in stats.values())
