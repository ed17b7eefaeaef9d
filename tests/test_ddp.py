"""DDP on CPU (2 gloo processes): a training step with SyncBN equals one process on the global
batch, both for a bare SGD step and for the Trainer with gradient accumulation (no_sync); rank 0
alone writes checkpoints and every rank waits for them; a resume is rank 0's choice on every rank."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gcnet.checkpoint import CheckpointError
from gcnet.config import BackboneConfig, ModelConfig
from gcnet.engine import Trainer, convert_sync_batchnorm, find_free_port, get_rank, get_world_size, unwrap, wrap_ddp
from gcnet.engine.distributed import all_reduce_max, barrier, teardown_distributed

torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randn(4, 2, generator=g)


def _sgd_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(2):
        loss = ((model(x) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def _trainer_run(work: Path, images_per_gpu: int, rank: int, world: int) -> None:
    from test_trainer import TinyDetector, make_trainer, tiny_config

    cfg = tiny_config(images_per_gpu=images_per_gpu, grad_accum=2, epochs=1)
    cfg = cfg.__class__(model=ModelConfig(backbone=BackboneConfig(norm="syncbn")), data=cfg.data, train=cfg.train)
    torch.manual_seed(0)
    trainer = make_trainer(cfg, work, TinyDetector(), n=8, num_replicas=world, rank=rank)
    trainer.fit()
    torch.save(unwrap(trainer.model).state_dict(), work / f"state_{rank}.pt")


def _patience_run(work: Path, rank: int, world: int) -> None:
    """Evaluation returns numbers on rank 0 only (as ``evaluate_model``): both ranks still stop
    together when train.patience runs out (a rank left training would hang the other)."""
    from test_trainer import make_trainer, tiny_config

    def evaluate(model: nn.Module, epoch: int) -> dict[str, list[float]]:
        return {"bbox": [0.5 if epoch == 1 else 0.4] + [0.0] * 11} if rank == 0 else {}

    trainer = make_trainer(tiny_config(epochs=4, patience=1), work, evaluate_fn=evaluate, num_replicas=world, rank=rank)
    trainer.fit()
    torch.save(torch.tensor([trainer.state.epoch, int(trainer.stopped_early)]), work / f"stop_{rank}.pt")


def _checkpoint_run(work: Path, rank: int, world: int) -> None:
    """Rank 0 alone writes each checkpoint (slowly here) and no rank goes on before it is complete;
    a resume takes rank 0's choice of file on every rank, and rank 0's refusal is every rank's."""
    import gcnet.engine.checkpointer as checkpointer_mod
    from test_trainer import make_trainer, tiny_config

    writes: list[str] = []
    seen: list[int] = []
    original = checkpointer_mod.save_checkpoint

    def slow_save(path: Path, *args: object, **kwargs: object) -> object:
        writes.append(Path(path).name)
        time.sleep(0.5)  # a rank that did not wait would read the previous file, or none
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    def read_back(trainer: Trainer, record: dict) -> None:
        if record["global_step"] == 2:  # right after the mid-epoch save (checkpoint_every_iters)
            seen.append(int(torch.load(work / "latest.pth", weights_only=True)["global_step"]))

    checkpointer_mod.save_checkpoint = slow_save  # type: ignore[assignment]
    try:
        cfg = tiny_config(images_per_gpu=1, epochs=1, checkpoint_every_iters=2)
        make_trainer(cfg, work, num_replicas=world, rank=rank, step_callback=read_back).fit()
    finally:
        checkpointer_mod.save_checkpoint = original
    resumed = make_trainer(tiny_config(images_per_gpu=1, epochs=2), work, num_replicas=world, rank=rank)
    if rank == 1:  # a listing of its own (a file system slow to show the newest file) must not count

        def own_choice() -> None:
            raise AssertionError("rank 1 chose a checkpoint itself")

        resumed.checkpointer.newest_readable = own_choice  # type: ignore[method-assign,assignment]
    assert resumed.resume()
    step = resumed.state.global_step
    bad = work.parent / "cut_short"
    if rank == 0:
        bad.mkdir()
        (bad / "latest.pth").write_bytes(b"PK\x03\x04 cut short")
    barrier()
    try:
        make_trainer(cfg, bad, num_replicas=world, rank=rank).resume()
        refusal = ""
    except CheckpointError as err:
        refusal = str(err)
    record = {"writes": writes, "seen": seen, "step": step, "refusal": refusal}
    (work / f"rank_{rank}.json").write_text(json.dumps(record))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    assert (get_rank(), get_world_size()) == (rank, world)
    # the logged peak memory is the largest of the ranks' (the original reduces it with MAX)
    peaks = all_reduce_max(torch.tensor([10.0 * (rank + 1), 5.0 - rank]))
    torch.save(peaks, Path(out) / f"max_{rank}.pt")
    # bare step: 2 images per rank, SyncBN, DDP-averaged gradients
    model = _net()
    model.train()
    convert_sync_batchnorm(model, "cpu")
    ddp = wrap_ddp(model, "cpu")
    assert ddp is not model
    x, y = _data()
    _sgd_steps(ddp, x[2 * rank : 2 * rank + 2], y[2 * rank : 2 * rank + 2])
    torch.save(unwrap(ddp).state_dict(), Path(out) / f"bare_{rank}.pt")
    # the Trainer: 1 image per rank per micro-batch, 2 micro-batches per step
    _trainer_run(Path(out) / "ddp", 1, rank, world)
    _patience_run(Path(out) / "patience", rank, world)
    _checkpoint_run(Path(out) / "checkpoints", rank, world)
    reached = Path(out) / "rank_1_reached_teardown"
    if rank == 1:
        time.sleep(1.0)  # the last to finish: rank 0 must not leave before it
        reached.write_text("1")
    teardown_distributed(barrier=True)  # every rank waits for the others, through the store
    if rank == 0:
        (Path(out) / "rank_0_left.json").write_text(json.dumps({"rank_1_had_reached": reached.exists()}))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, find_free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.slow  # spawns 2 processes (~5-15 s to start)
def test_all_reduce_max_gives_every_rank_the_maximum(out_dir: Path) -> None:
    for rank in (0, 1):
        assert torch.load(out_dir / f"max_{rank}.pt", weights_only=True).tolist() == [20.0, 5.0]


@pytest.mark.slow
def test_teardown_waits_for_every_rank(out_dir: Path) -> None:
    assert json.loads((out_dir / "rank_0_left.json").read_text()) == {"rank_1_had_reached": True}


@pytest.mark.slow
def test_ddp_syncbn_step_equals_single_process(out_dir: Path) -> None:
    ref = _net()
    x, y = _data()
    _sgd_steps(ref, x, y)
    expected = ref.state_dict()
    for rank in range(2):
        got = torch.load(out_dir / f"bare_{rank}.pt", weights_only=True)
        assert list(got) == list(expected)  # SyncBN keeps BatchNorm2d's keys, no "module."
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=key)


def assert_trains_as_one_process(ddp_dir: Path, single_dir: Path) -> None:
    """The 2 ranks' final weights and rank 0's log of :func:`_trainer_run` (1 image per rank) equal
    one process's run on the same global batch (2 images) in ``single_dir``."""
    _trainer_run(single_dir, 2, 0, 1)
    expected = torch.load(single_dir / "state_0.pt", weights_only=True)
    for rank in range(2):
        got = torch.load(ddp_dir / f"state_{rank}.pt", weights_only=True)
        for key, value in expected.items():
            torch.testing.assert_close(got[key].float(), value.float(), rtol=1e-5, atol=1e-5, msg=key)
    read = lambda p: [json.loads(line) for line in (p / "log.jsonl").read_text().splitlines()]  # noqa: E731
    ddp_log, single_log = read(ddp_dir), read(single_dir)
    assert len(ddp_log) == len(single_log) == 2  # rank 0 only writes
    for a, b in zip(ddp_log, single_log):
        assert a["lr"] == pytest.approx(b["lr"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_ddp_trainer_with_accumulation_equals_single_process(out_dir: Path, tmp_path: Path) -> None:
    """2 ranks x 1 image x 2 micro-batches (SyncBN, no_sync) == 1 process x 2 images x 2."""
    assert_trains_as_one_process(out_dir / "ddp", tmp_path)


def test_single_process_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    from gcnet.engine import init_distributed
    from gcnet.engine.distributed import all_gather_object, any_process

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.device.type, ctx.is_main, ctx.distributed) == (0, 1, "cpu", True, False)
    assert not dist.is_initialized()
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, "cpu") is model and unwrap(model) is model
    assert any_process(True, "cpu") and not any_process(False, "cpu")
    assert all_gather_object({"a": 1}) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed("cpu")
    # under torchrun an explicit GPU index must be the process's own (else all ranks share cuda:0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match="LOCAL_RANK=1.*pass --device cuda"):
        init_distributed("cuda:0")


@pytest.mark.slow
def test_ddp_ranks_stop_together_on_rank_0s_numbers(out_dir: Path) -> None:
    for rank in range(2):  # best at epoch 1, no better at epoch 2: patience 1 spent
        assert torch.load(out_dir / "patience" / f"stop_{rank}.pt", weights_only=True).tolist() == [2, 1]
    assert torch.load(out_dir / "patience" / "best.pth", weights_only=True)["meta"]["best"]["epoch"] == 1


@pytest.mark.slow
def test_rank_0_writes_each_checkpoint_and_every_rank_waits_for_it(out_dir: Path) -> None:
    ranks = [json.loads((out_dir / "checkpoints" / f"rank_{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["writes"] == ["latest.pth", "epoch_1.pth"] and ranks[1]["writes"] == []
    assert ranks[0]["seen"] == ranks[1]["seen"] == [2]  # the step-2 file, complete, on both ranks
    assert ranks[0]["step"] == ranks[1]["step"] == 4  # both resumed rank 0's choice (epoch_1 / latest)
    assert ranks[0]["refusal"] == ranks[1]["refusal"] != ""  # rank 1 did not wait for a choice
    assert "latest.pth" in ranks[1]["refusal"]
