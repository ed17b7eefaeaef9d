"""A run never loses work: signals save and stop with a requeue code, resume takes the newest
readable checkpoint, the log holds each step once, no checkpoint holds NaN/inf, an existing run is
not overwritten unasked; and validation during training (metrics logged, best.pth, patience).
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import types
from pathlib import Path

import pytest
import torch

from gcnet.checkpoint import CheckpointError
from gcnet.engine import NonFiniteLossError, Trainer, TrainingStopped, seed_everything, train
from test_trainer import TinyDetector, make_trainer, read_log, tiny_config

torch.set_num_threads(1)


def _steps(work: Path) -> list[int]:
    return [r["global_step"] for r in read_log(work) if r.get("mode") != "val"]


def _strip(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in records]


def _signal_at(step: int, signum: int):
    def callback(trainer: Trainer, record: dict) -> None:
        if record["global_step"] == step:
            os.kill(os.getpid(), signum)

    return callback


def test_ctrl_c_saves_like_sigterm_and_the_resumed_log_holds_each_step_once(tmp_path: Path) -> None:
    cfg = tiny_config(epochs=2)

    def run(work: Path, callback: object = None, resume: bool = False) -> Trainer:
        seed_everything(0)
        trainer = make_trainer(cfg, work, TinyDetector(dropout=0.5), flip_prob=0.5, step_callback=callback)
        trainer.fit(resume=resume)
        return trainer

    run(tmp_path / "full")
    before = signal.getsignal(signal.SIGINT)
    stopped = run(tmp_path / "cut", _signal_at(3, signal.SIGINT))
    assert stopped.stop_signal == signal.SIGINT and signal.getsignal(signal.SIGINT) is before
    assert torch.load(tmp_path / "cut" / "latest.pth", weights_only=True)["global_step"] == 3
    with open(tmp_path / "cut" / "log.jsonl", "a") as f:  # what a kill after the save leaves behind
        f.write(json.dumps({"epoch": 1, "iter": 4, "global_step": 4, "loss": 9.0}) + "\n" + '{"epoch": 1, "it')
    resumed = run(tmp_path / "cut", resume=True)
    assert resumed.stop_signal is None
    assert _steps(tmp_path / "cut") == list(range(1, 9))
    assert _strip(read_log(tmp_path / "cut")) == _strip(read_log(tmp_path / "full"))
    stop = TrainingStopped(signal.SIGINT, tmp_path / "latest.pth", "epoch 1, iteration 3 (global step 3)")
    assert stop.exit_code == 130 and TrainingStopped(signal.SIGTERM, Path("x"), "").exit_code == 143
    assert str(stop).startswith("stopped by SIGINT at epoch 1, iteration 3") and "--resume" in str(stop)


def test_resume_takes_the_newest_readable_checkpoint(tmp_path: Path, capsys) -> None:
    cfg = tiny_config(epochs=2)
    make_trainer(cfg, tmp_path).fit()
    (tmp_path / "latest.pth").write_bytes(b"PK\x03\x04 cut short")
    trainer = make_trainer(tiny_config(epochs=3), tmp_path)
    assert trainer.resume() and trainer.state.global_step == 8  # epoch_2.pth
    err = capsys.readouterr().err
    assert "resume: skipping" in err and "latest.pth" in err
    for path in tmp_path.glob("*.pth"):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="none of the checkpoints .* reads back .*--overwrite"):
        make_trainer(cfg, tmp_path).resume()  # never a silent fresh start over earlier work
    assert not make_trainer(cfg, tmp_path / "empty").resume()  # nothing there yet: a fresh start
    weights_only = tmp_path / "w"
    weights_only.mkdir()
    torch.save({"state_dict": TinyDetector().state_dict()}, weights_only / "latest.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint.*--load-from"):
        make_trainer(cfg, weights_only).resume()


def test_a_work_dir_with_checkpoints_needs_resume_or_overwrite(tmp_path: Path) -> None:
    from test_trainer import real_tiny_config

    cfg = real_tiny_config(tmp_path / "data", epochs=1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "epoch_3.pth").write_bytes(b"old")
    (work / "log.jsonl").write_text('{"global_step": 1}\n')
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run .*--resume.*--overwrite"):
        train(cfg, work, device="cpu")
    with pytest.raises(ValueError, match="give one of them"):
        train(cfg, work, resume=True, overwrite=True, device="cpu")
    train(cfg, work, overwrite=True, device="cpu")
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth", "latest.pth"]
    assert _steps(work) == [1, 2]


@pytest.mark.parametrize("where", ["momentum", "bn_buffer"])
def test_non_finite_weights_are_never_saved(tmp_path: Path, where: str) -> None:
    """A NaN in the BN statistics leaves the training loss finite (batch statistics), as does one
    that the next update moves into the weights, so only the check at saving catches them: the
    file kept holds finite numbers and resumes. (Corrupted after step 2's save.)"""
    cfg = tiny_config(epochs=2, checkpoint_every_iters=1)

    def corrupt(trainer: Trainer, record: dict) -> None:
        if record["global_step"] == 2:
            bn = trainer.module.backbone[1]
            state = trainer.optimizer.state[bn.weight]
            with torch.no_grad():
                (state["momentum_buffer"] if where == "momentum" else bn.running_var)[0] = float("nan")

    trainer = make_trainer(cfg, tmp_path, step_callback=corrupt)
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite weights at epoch 1, iteration 3 .*backbone\.1\."
        r".*the last good checkpoint is .*latest\.pth \(epoch 1, iteration 2",
    ):
        trainer.fit()
    ckpt = torch.load(tmp_path / "latest.pth", weights_only=True)
    assert ckpt["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    resumed = make_trainer(cfg, tmp_path)
    resumed.fit(resume=True)
    assert _steps(tmp_path)[-1] == 8 and all(math.isfinite(r["loss"]) for r in read_log(tmp_path))


def _fake_stats(values: list[float]):
    calls: list[int] = []

    def evaluate(model: torch.nn.Module, epoch: int) -> dict[str, list[float]]:
        calls.append(epoch)
        torch.rand(3)  # an evaluation that draws random numbers must not change training
        return {"bbox": [values[epoch - 1]] + [0.5] * 11}

    return evaluate, calls


def test_validation_metrics_best_checkpoint_and_patience(tmp_path: Path, monkeypatch) -> None:
    scalars: list[tuple[str, float, int]] = []

    class Writer:  # TensorBoard stand-in: what the logger writes
        def __init__(self, log_dir: str, purge_step: object = None) -> None:
            pass

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            scalars.append((tag, value, step))

        def flush(self) -> None:
            pass

        close = flush

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    cfg = tiny_config(epochs=6, patience=2)
    evaluate, calls = _fake_stats([0.1, 0.3, 0.2, 0.25, 0.9, 0.9])
    trainer = make_trainer(cfg, tmp_path / "run", evaluate_fn=evaluate)
    trainer.fit()
    assert trainer.stopped_early and calls == [1, 2, 3, 4]  # no better bbox_AP at epochs 3 and 4
    val = [r for r in read_log(tmp_path / "run") if r.get("mode") == "val"]
    assert [(r["epoch"], r["global_step"], r["bbox_AP"]) for r in val] == [
        (1, 4, 0.1),
        (2, 8, 0.3),
        (3, 12, 0.2),
        (4, 16, 0.25),
    ]
    assert set(val[0]) >= {"bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"}
    assert ("val/bbox_AP", 0.3, 8) in scalars and any(tag == "train/loss" for tag, _, _ in scalars)
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert best["meta"]["best"] == {"metric": "bbox_AP", "value": 0.3, "epoch": 2}
    again = make_trainer(cfg, tmp_path / "run", evaluate_fn=evaluate)
    again.fit(resume=True)  # patience was spent: nothing more to do
    assert again.stopped_early and calls == [1, 2, 3, 4]

    # evaluation every 2 epochs, and it does not change the training (RNG streams restored)
    evaluate, calls = _fake_stats([0.0] * 6)
    seed_everything(0)
    make_trainer(
        tiny_config(epochs=4, eval_interval=2), tmp_path / "eval", TinyDetector(dropout=0.5), evaluate_fn=evaluate
    ).fit()
    seed_everything(0)
    make_trainer(tiny_config(epochs=4), tmp_path / "plain", TinyDetector(dropout=0.5)).fit()
    assert calls == [2, 4]
    trained = [r for r in read_log(tmp_path / "eval") if r.get("mode") != "val"]
    assert _strip(trained) == _strip(read_log(tmp_path / "plain"))


def test_cli_ctrl_c_exits_130_and_resume_finishes(tmp_path: Path, monkeypatch, capsys) -> None:
    from gcnet.cli import main
    from gcnet.data import make_synthetic_coco

    paths = make_synthetic_coco(
        tmp_path / "data", num_train=4, num_val=0, image_size=(64, 64), object_size=(12, 30), max_objects=2
    )
    original = Trainer._on_iter_end

    def interrupted(self: Trainer, record: dict) -> bool:
        if record["global_step"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: handled by the trainer, not KeyboardInterrupt
        return original(self, record)

    argv = [
        "train",
        "gcnet-demo",
        "--data",
        paths["train_ann"],
        "--images",
        paths["train_images"],
        "--work-dir",
        str(tmp_path / "work"),
        "--set",
        "train.epochs=2",
        "--set",
        "train.log_interval=1",
        "--set",
        "data.workers_per_gpu=0",
        "--set",
        "data.scale=(64, 64)",
        "--set",
        "data.images_per_gpu=2",
    ]
    monkeypatch.setattr(Trainer, "_on_iter_end", interrupted)
    assert main(argv) == 130
    assert "stopped by SIGINT at epoch 1, iteration 1" in capsys.readouterr().err
    monkeypatch.setattr(Trainer, "_on_iter_end", original)
    assert main([*argv, "--resume"]) == 0
    assert _steps(tmp_path / "work") == [1, 2, 3, 4]


@pytest.mark.slow
def test_an_undecodable_image_met_with_loader_workers_stops_train_in_one_line(tmp_path: Path) -> None:
    """A PNG whose header reads but whose pixels do not (so the check at load passes it), met by a
    DataLoader worker mid-epoch: one error line, exit code 2, and the process exits (workers that
    ignore SIGTERM once kept it from exiting)."""
    import subprocess

    from gcnet.data import make_synthetic_coco

    paths = make_synthetic_coco(tmp_path / "data", num_train=6, num_val=0, image_size=(64, 64), seed=3)
    victim = sorted(Path(paths["train_images"]).glob("*.png"))[-1]
    victim.write_bytes(victim.read_bytes()[:80])  # IHDR intact, image data cut off
    argv = [
        sys.executable,
        "-m",
        "gcnet",
        "train",
        "gcnet-demo",
        "--data",
        paths["train_ann"],
        "--images",
        paths["train_images"],
        "--work-dir",
        str(tmp_path / "work"),
        "--set",
        "data.scale=(64, 64)",
        "--set",
        "data.workers_per_gpu=1",
        "--set",
        "data.images_per_gpu=2",
        "--set",
        "train.epochs=1",
        "--set",
        "train.warmup_iters=1",
    ]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(errors) == 1 and victim.name in errors[0] and "Traceback" not in run.stderr


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()] if tasks.exists() else []


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the loader worker through /proc")
def test_a_killed_loader_worker_stops_train_in_one_line_and_keeps_its_checkpoint(tmp_path: Path) -> None:
    """SIGKILL of a DataLoader worker (what the out-of-memory killer does) mid-run: one error line
    naming the cause and the checkpoint to resume from, exit code 1, no traceback, checkpoint intact."""
    import subprocess
    import time

    from gcnet.data import make_synthetic_coco

    paths = make_synthetic_coco(tmp_path / "data", num_train=8, num_val=0, image_size=(64, 64), seed=3)
    work = tmp_path / "work"
    sets = [
        "data.scale=(64, 64)",
        "data.workers_per_gpu=1",
        "data.images_per_gpu=2",
        "train.epochs=50",
        "train.warmup_iters=1",
        "train.checkpoint_every_iters=1",
    ]
    argv = [sys.executable, "-m", "gcnet", "train", "gcnet-demo", "--data", paths["train_ann"]]
    argv += ["--images", paths["train_images"], "--work-dir", str(work)]
    argv += [arg for s in sets for arg in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while not (work / "latest.pth").exists() or not _children(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        os.kill(_children(proc.pid)[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert proc.returncode == 1, stderr[-2000:]
    assert "Traceback" not in stderr and len(errors) == 1, stderr[-2000:]
    assert "DataLoader worker" in errors[0] and "--resume continues from" in errors[0]
    assert torch.load(work / "latest.pth", weights_only=True)["global_step"] >= 1


def _loader_raising_on_sigchld(signum: int, frame: object) -> None:
    raise RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed.")


@pytest.mark.skipif(not hasattr(signal, "SIGCHLD"), reason="POSIX signals")
def test_a_worker_death_during_a_checkpoint_write_lands_after_the_file_is_whole(tmp_path: Path, monkeypatch) -> None:
    """torch's loader raises from its SIGCHLD handler; one arriving mid-``torch.save`` used to abort
    the write with a zip error. Now the checkpoint is written whole, then the loader's error is raised."""
    from gcnet.engine import checkpointer as checkpointer_module
    from gcnet.engine.checkpointer import Checkpointer

    real_save = checkpointer_module.save_checkpoint

    def save_with_a_worker_dying(path, model, meta, **extra):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGCHLD)  # delivered here, mid-write, were it not deferred
        return real_save(path, model, meta, **extra)

    monkeypatch.setattr(checkpointer_module, "save_checkpoint", save_with_a_worker_dying)
    previous = signal.signal(signal.SIGCHLD, _loader_raising_on_sigchld)
    try:
        ckpt = Checkpointer(tmp_path / "work")
        with pytest.raises(RuntimeError, match=r"^DataLoader worker \(pid 4242\)"):
            ckpt.save(torch.nn.Linear(2, 2), {}, {"global_step": 3}, epoch_file=1)
        assert signal.getsignal(signal.SIGCHLD) is _loader_raising_on_sigchld
    finally:
        signal.signal(signal.SIGCHLD, previous)
    for name in ("epoch_1.pth", "latest.pth"):
        assert torch.load(tmp_path / "work" / name, weights_only=True)["global_step"] == 3


def test_a_loader_death_under_another_error_is_still_told_as_the_worker_died(tmp_path: Path) -> None:
    """Raised while handling the loader's error (a write it cut short), the outer error is not the story."""
    from gcnet.engine.checkpointer import Checkpointer
    from gcnet.engine.launch import _loader_worker_died

    try:
        try:
            _loader_raising_on_sigchld(signal.SIGINT, None)
        except RuntimeError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1097152")  # noqa: B904 (implicit context, as torch raises it)
    except RuntimeError as outer:
        said = _loader_worker_died(outer, Checkpointer(tmp_path))
    assert said is not None and str(said).startswith("DataLoader worker (pid 4242) is killed by signal: Killed:")
    assert _loader_worker_died(RuntimeError("CUDA out of memory"), Checkpointer(tmp_path)) is None
