"""torch.distributed plumbing: torchrun environment, process group, DDP wrapping, small collectives.

Launch with ``torchrun --nproc_per_node N -m gcnet train ...`` (any number of nodes), or start every
rank directly with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT (SLURM ``srun``); a plain
``python`` run is a single process. NCCL on CUDA, gloo on CPU. Every helper is a no-op (or the
identity) without a group. A collective that fails because another rank died or stopped answering
(within the group's timeout) becomes :class:`RankLostError`, one line and exit code 75.
"""

from __future__ import annotations

import inspect
import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from gcnet.checkpoint.io import unwrap_model as unwrap  # one unwrapper for DDP, DataParallel, compile

__all__ = [
    "EXIT_RANK_LOST",
    "DistContext",
    "RankLostError",
    "all_gather_object",
    "as_rank_lost",
    "all_reduce_max",
    "all_reduce_mean",
    "any_process",
    "barrier",
    "broadcast_object",
    "comm_failure",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "restart_count",
    "teardown_distributed",
    "unwrap",
    "wrap_ddp",
]


# EX_TEMPFAIL of sysexits.h: nothing the user must fix; requeue, and --resume continues.
EXIT_RANK_LOST = 75
# The first line of what gloo raises (a RuntimeError naming its own source file) and of what a
# TCPStore rendezvous raises when ranks are missing; NCCL and newer stores raise torch's DistError.
_COMM_FAILURE = re.compile(r"^\[[^\]]*gloo[^\]]*\]|waiting for clients|clients joined", re.IGNORECASE)
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")


class RankLostError(RuntimeError):
    """This rank's collective failed: another rank died (killed, out of memory, a lost node) or did
    not answer within the group's timeout. ``exit_code`` 75 tells a scheduler to requeue."""

    exit_code = EXIT_RANK_LOST

    def __init__(self, rank: int, world_size: int, cause: str, timeout_s: float, resume_hint: str) -> None:
        super().__init__(
            f"rank {rank} of {world_size} lost the other ranks ({cause}): one of them died (killed, out of "
            f"memory, a failed node; its own log says which) or did not answer within the {timeout_s:g} s "
            f"collective timeout (train.dist_timeout_s); {resume_hint}"
        )


def comm_failure(err: BaseException) -> str | None:
    """The backend's own words (first sentence, without its source location) when ``err`` is a
    failed collective or rendezvous; None for any other error."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    dist_error: Any = getattr(dist, "DistError", ())  # torch >= 2.1; gloo raises plain RuntimeError
    if not (isinstance(err, dist_error) or (isinstance(err, RuntimeError) and _COMM_FAILURE.search(first))):
        return None
    return _SOURCE_PREFIX.sub("", first).split(". ")[0].rstrip(".")


def as_rank_lost(err: BaseException, timeout_s: float, resume_hint: str) -> RankLostError | None:
    """``err`` as :class:`RankLostError` when it is a failed collective of a group of several
    ranks (joined or being joined); None otherwise."""
    joined = dist.is_available() and dist.is_initialized()
    world = get_world_size() if joined else _env_int("WORLD_SIZE", 1)
    cause = comm_failure(err) if world > 1 else None
    if cause is None:
        return None
    return RankLostError(get_rank() if joined else _env_int("RANK", 0), world, cause, timeout_s, resume_hint)


def restart_count() -> int:
    """How often torchrun's agent restarted this job's workers (``TORCHELASTIC_RESTART_COUNT``; 0
    for a first attempt or without torchrun)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: ``rank`` of ``world_size``, ``local_rank`` on its node, ``device``."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from exc


def init_distributed(device: torch.device | str | None = None, timeout_s: float = 1800.0) -> DistContext:
    """Join the process group described by torchrun's RANK / WORLD_SIZE / LOCAL_RANK variables.

    ``device`` None picks ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. A world of one
    process (no torchrun) initialises nothing. Already-initialised groups are reused.
    ``timeout_s`` bounds every collective and the wait for the other ranks at start: gloo raises
    after it; NCCL's watchdog (its async error handling, kept on) ends the process after it.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if dist.is_available() and dist.is_initialized():
        world_size, rank = dist.get_world_size(), dist.get_rank()
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        elif world_size > 1 and device.index != local_rank:
            raise ValueError(
                f"device {device} given to a torchrun process with LOCAL_RANK={local_rank}: each process "
                f"needs its own GPU; pass --device cuda (without an index) and torchrun assigns cuda:LOCAL_RANK"
            )
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":  # without it a rank waits for a dead peer forever (torch's default: 3)
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
        timeout = timedelta(seconds=timeout_s)
        store, rank, world_size = next(dist.rendezvous("env://", rank=rank, world_size=world_size, timeout=timeout))
        # Newer torchrun keeps its agent's store across restarts (TORCHELASTIC_USE_AGENT_STORE): a
        # restarted group would read the previous attempt's addresses and fail to connect.
        attempt = dist.PrefixStore(f"gcnet/attempt_{restart_count()}", store)
        dist.init_process_group(backend=backend, store=attempt, rank=rank, world_size=world_size, timeout=timeout)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


_teardowns = 0  # groups this process has left: fresh handshake keys when a store outlives a group
# How long the GIL is let go before a group is destroyed (see teardown_distributed).
GIL_RELEASE_BEFORE_DESTROY_S = 0.2


def teardown_distributed(barrier: bool = False) -> None:
    """Leave the process group (if any) so the process can exit without hanging.

    ``barrier`` (after a normal finish): every rank waits for the others first, through the group's
    store rather than a collective, so none leaves while another still talks to it. On an error
    path leave it off: a dead rank would make the wait last the store's timeout.

    Destroying a gloo group joins its worker threads while this thread holds the GIL. A worker that
    is still releasing its last collective's tensors needs the GIL when Python has already dropped
    one of them, and then neither moves: seen on torch 2.4 in about 1 of 100 teardowns in a tight
    loop on a loaded 2-core machine (py-spy: the main thread in ``~ProcessGroupGloo`` joining, a worker in
    ``gil_scoped_acquire`` from ``~AsyncAllreduceWork``). Sleeping first hands the GIL to any such
    worker (``benchmarks/teardown_stress.py`` measures it). Only after a normal finish: on an error
    path the process leaves at once, to say what failed before torchrun's agent, which has seen a
    rank fail, stops it."""
    global _teardowns
    if not (dist.is_available() and dist.is_initialized()):
        return
    if barrier and dist.get_world_size() > 1:
        _every_rank_reached(f"gcnet/teardown_{_teardowns}", dist.get_rank(), dist.get_world_size())
    _teardowns += 1
    if barrier:
        time.sleep(GIL_RELEASE_BEFORE_DESTROY_S)
    dist.destroy_process_group()


def _every_rank_reached(name: str, rank: int, world_size: int) -> None:
    """Return once every rank has called this with ``name``. Rank 0 leaves last, after every other
    rank said it is leaving: the store may live in rank 0's process (env:// without torchrun)."""
    store = dist.distributed_c10d._get_default_store()
    store.set(f"{name}/reached/{rank}", "1")
    store.wait([f"{name}/reached/{r}" for r in range(world_size)])
    if rank == 0:
        store.wait([f"{name}/leaving/{r}" for r in range(1, world_size)])
    else:
        store.set(f"{name}/leaving/{rank}", "1")


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a group)."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def find_free_port() -> int:
    """A free TCP port on 127.0.0.1 (for single-node process groups in tests and scripts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wrap_ddp(model: nn.Module, device: torch.device | str, find_unused_parameters: bool = False) -> nn.Module:
    """DDP-wrap ``model`` when running distributed; the model itself otherwise.

    ``find_unused_parameters`` costs a graph walk per step, so it stays off unless a model has
    trainable parameters that some steps do not use (the original's heads add zero terms instead).
    Buffers are not broadcast each step (the original's ``broadcast_buffers=False``).
    """
    if get_world_size() == 1:
        return model
    device = torch.device(device)
    device_ids = (
        [device.index if device.index is not None else torch.cuda.current_device()] if (device.type == "cuda") else None
    )
    # Newer torch renames the flag (forward_sync_buffers); older only has broadcast_buffers.
    no_buffer_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        model,
        device_ids=device_ids,
        find_unused_parameters=find_unused_parameters,
        **no_buffer_sync,
    )


def all_reduce_mean(tensor: Tensor) -> Tensor:
    """Mean of ``tensor`` over all processes (a detached copy; identity for one process)."""
    out = tensor.detach().clone()
    world = get_world_size()
    if world > 1:
        dist.all_reduce(out)
        out /= world
    return out


def all_reduce_max(tensor: Tensor) -> Tensor:
    """Element-wise maximum of ``tensor`` over all processes (a detached copy; identity for one)."""
    out = tensor.detach().clone()
    if get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def any_process(flag: bool, device: torch.device | str) -> bool:
    """True when ``flag`` is set on at least one process (all processes get the same answer)."""
    if get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (a one-element list without a group)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out
