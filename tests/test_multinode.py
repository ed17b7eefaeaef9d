"""Several nodes, lost ranks and elastic restarts, on one CPU machine (gloo).

- two torchrun "nodes" (``--nnodes 2 --nproc-per-node 1``, c10d rendezvous on 127.0.0.1) train as
  one process on the same global batch does;
- under ``torchrun --max-restarts 1`` a rank SIGKILLed mid-epoch, after a checkpoint: the survivor
  stops by itself with the lost-rank line, the agent restarts both, they resume from rank 0's
  choice of checkpoint and end with the very weights (torch.equal) of the uninterrupted run;
- ranks started directly (as ``srun`` does, no agent): when one stops answering (SIGSTOP: its
  sockets stay open), the other exits with code 75 and one line, within the collective timeout
  it was given. (A killed rank's survivor learns at once, from the closed connection: the elastic
  test sees its line.)

The processes run ``tests/dist_worker.py`` (its victim hook is test-side; the library has none).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_worker import train_config
from gcnet.cli import main
from gcnet.engine import EXIT_RANK_LOST, RankLostError, find_free_port, train
from gcnet.engine.distributed import comm_failure
from test_ddp import assert_trains_as_one_process
from test_trainer import read_log, real_tiny_config

torch.set_num_threads(1)

WORKER = str(Path(__file__).resolve().parent / "dist_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
LOST_LINE = "gcnet train: error: rank 0 of 2 lost the other ranks ("


def _env(**extra: str) -> dict[str, str]:
    """This environment without any process-group variables of its own, one thread per process."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _rdzv(nnodes: int, nproc: int, port: int, *extra: str) -> list[str]:
    return [
        *TORCHRUN,
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}",
        "--rdzv-id=gcnet-test",
        *extra,
    ]


def _state(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


def _steps(work: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "data_time")} for r in read_log(work)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("multinode") / "data"
    train_config(root)  # written once here; the workers reuse it
    return root


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Two torchrun agents, one worker each, meeting at one rendezvous endpoint: test_ddp's Trainer
    run, then the real tiny detector's uninterrupted training (the elastic test's reference)."""
    work = tmp_path_factory.mktemp("two_nodes")
    command = [*_rdzv(2, 1, find_free_port()), WORKER, "ddp", str(data), str(work)]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())]
    nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env()))
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    return work


@pytest.mark.slow  # two torchrun agents and their workers (~15 s on a 2-core VM)
def test_two_nodes_train_as_one_process_on_the_global_batch(two_nodes: Path, tmp_path: Path) -> None:
    assert_trains_as_one_process(two_nodes / "ddp", tmp_path)
    assert [r["global_step"] for r in read_log(two_nodes / "train")] == list(range(1, 7))


@pytest.mark.slow  # one torchrun, two attempts (~25 s)
def test_a_killed_rank_is_restarted_and_the_run_resumes_to_the_same_weights(
    two_nodes: Path, data: Path, tmp_path: Path
) -> None:
    command = [*_rdzv(1, 2, find_free_port(), "--max-restarts=1"), WORKER, "train", str(data), str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env(GCNET_TEST_VICTIM="1:5:KILL"))
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert output.count(LOST_LINE) == 1  # the survivor of attempt 0 stopped by itself, in one line
    assert "restart 1 of the workers (torchrun): resuming from the newest checkpoint" in output
    assert f"resume: from {tmp_path / 'train' / 'latest.pth'} (epoch 2, iteration 1 (global step 4))" in output
    reference = two_nodes / "train"
    assert _steps(tmp_path / "train") == _steps(reference)  # steps 1-6 once each, the same losses
    final, expected = _state(tmp_path / "train" / "epoch_2.pth"), _state(reference / "epoch_2.pth")
    assert list(final) == list(expected)
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.mark.slow  # two plain processes (~15 s)
def test_directly_launched_ranks_stop_within_the_timeout_when_one_is_silent(data: Path, tmp_path: Path) -> None:
    """SIGSTOP keeps the victim's sockets open, so only the 6 s collective timeout
    (train.dist_timeout_s) ends the survivor's wait."""
    port, timeout_s = find_free_port(), 6.0
    ranks = []
    for rank in (0, 1):
        env = _env(
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            GCNET_TEST_VICTIM="1:5:STOP",
        )
        command = [sys.executable, WORKER, "train", str(data), str(tmp_path), str(timeout_s)]
        ranks.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        _, err = ranks[0].communicate(timeout=120)
        assert ranks[1].poll() is None  # still stopped, holding its sockets
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert ranks[0].returncode == EXIT_RANK_LOST, err[-3000:]
    lines = [line for line in err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(LOST_LINE) and "Traceback" not in err, err[-3000:]
    assert f"within the {timeout_s:g} s collective timeout (train.dist_timeout_s)" in lines[0]
    assert f"--resume continues from {tmp_path / 'train' / 'latest.pth'}" in lines[0]  # step 4's
    assert "Timed out" in lines[0]
    assert torch.load(tmp_path / "train" / "latest.pth", weights_only=True)["global_step"] == 4


def test_backend_errors_are_read_as_a_lost_rank_and_others_are_not() -> None:
    """What gloo (torch 2.4 and 2.14) and the rendezvous store raised in these tests' runs."""
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:32174. This is typically caused by a remote worker crashing."
    )
    assert comm_failure(gloo) == "Connection closed by peer [127.0.0.1]:32174"
    timed_out = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 3000ms for recv "
        "operation to complete"
    )
    assert comm_failure(timed_out) == "Timed out waiting 3000ms for recv operation to complete"
    store = RuntimeError("Timed out after 31 seconds waiting for clients. 1/2 clients joined.")
    assert comm_failure(store) == "Timed out after 31 seconds waiting for clients"
    for other in (
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("work_dirs/gloo/latest.pth: not a training checkpoint"),
        ValueError("[gloo] a value error is not a collective's"),
    ):
        assert comm_failure(other) is None


def test_cli_train_says_a_lost_rank_in_one_line_with_exit_code_75(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def lost(*args: object, **kwargs: object) -> Path:
        raise RankLostError(1, 16, "Connection closed by peer [10.0.0.7]:4242", 1800, "no checkpoint was written yet")

    monkeypatch.setattr("gcnet.cli.train", lost)
    argv = ["train", "gcnet-demo", "--data", str(data / "annotations" / "instances_train.json")]
    assert main([*argv, "--images", str(data / "train"), "--work-dir", str(tmp_path)]) == EXIT_RANK_LOST == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "gcnet train: error: rank 1 of 16 lost the other ranks (Connection closed by peer [10.0.0.7]:4242): "
        "one of them died (killed, out of memory, a failed node; its own log says which) or did not answer "
        "within the 1800 s collective timeout (train.dist_timeout_s); no checkpoint was written yet"
    ]


def test_a_restarted_worker_resumes_whatever_it_was_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """torchrun restarts the workers with the command line of the first attempt: its --overwrite
    (or neither flag) must neither delete nor refuse what that attempt saved."""
    cfg = real_tiny_config(tmp_path / "data", epochs=1)
    work = tmp_path / "work"
    train(cfg, work, overwrite=True, device="cpu")
    first = (work / "epoch_1.pth").stat().st_mtime_ns
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    longer = real_tiny_config(tmp_path / "data", epochs=2)
    train(longer, work, overwrite=True, device="cpu")
    out = capsys.readouterr().out
    assert "restart 1 of the workers (torchrun)" in out and f"resume: from {work / 'latest.pth'}" in out
    assert (work / "epoch_1.pth").stat().st_mtime_ns == first  # not deleted and trained again
    assert [r["global_step"] for r in read_log(work)] == [1, 2, 3, 4]
    train(real_tiny_config(tmp_path / "data", epochs=3), work, device="cpu")  # no flag: not refused
    assert [r["global_step"] for r in read_log(work)] == list(range(1, 7))
