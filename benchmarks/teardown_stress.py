"""How often leaving a gloo process group hangs: two CPU ranks join a group, run what the tests run
(a SyncBatchNorm2d step and an all_reduce) and leave it with ``teardown_distributed(barrier=True)``,
cycle after cycle, once with the GIL released before the group is destroyed (the default pause)
and once without (``--pauses 0.2,0``), each for ``--cycles`` cycles::

    python benchmarks/teardown_stress.py --cycles 2000

A cycle that does not finish within ``--cycle-timeout`` seconds counts as a hang: the stuck rank
prints its Python stack and exits, the pair is started again and the count goes on from the next
cycle. Run a few in parallel (or beside other work) to load the machine: the hang needs a worker
thread that is late by a few milliseconds. The stacks of hung cycles go to stderr.
"""

from __future__ import annotations

import argparse
import faulthandler
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gcnet.engine import SyncBatchNorm2d, distributed, find_free_port


def _rank(rank: int, port: int, first: int, last: int, pause: float, timeout: float, progress: str) -> None:
    torch.set_num_threads(1)
    distributed.GIL_RELEASE_BEFORE_DESTROY_S = pause
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timeout=timedelta(seconds=3 * timeout))
    for cycle in range(first, last):
        faulthandler.dump_traceback_later(timeout, exit=True)
        dist.init_process_group("gloo", store=dist.PrefixStore(f"cycle_{cycle}", store), rank=rank, world_size=2)
        norm = SyncBatchNorm2d(3)
        x = torch.randn(1, 3, 4, 5, requires_grad=True)
        norm(x).sum().backward()
        dist.all_reduce(torch.ones(1))
        distributed.teardown_distributed(barrier=True)
        faulthandler.cancel_dump_traceback_later()
        if rank == 0:
            Path(progress).write_text(str(cycle + 1))
    store.set(f"done/{rank}", "1")
    store.wait(["done/0", "done/1"])
    if rank == 0:
        time.sleep(0.5)  # the store lives here: let rank 1 read it before it goes


def stress(cycles: int, pause: float, timeout: float) -> tuple[int, float]:
    """Run ``cycles`` teardowns with ``pause``; return (hangs, seconds)."""
    hangs, done, start = 0, 0, time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        progress = Path(tmp) / "done"
        while done < cycles:
            args = (find_free_port(), done, cycles, pause, timeout, str(progress))
            try:
                mp.spawn(_rank, args=args, nprocs=2, join=True)
                done = cycles
            except mp.ProcessExitedException:  # a stuck rank's watchdog ended it
                hangs += 1
                finished = int(progress.read_text()) if progress.exists() else 0
                done = max(finished, done) + 1  # go on after the cycle that hung
    return hangs, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000, help="teardowns per pause")
    parser.add_argument(
        "--pauses", default=f"{distributed.GIL_RELEASE_BEFORE_DESTROY_S},0", help="seconds, comma-separated"
    )
    parser.add_argument("--cycle-timeout", type=float, default=30.0, help="seconds before a cycle counts as hung")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.cycles} cycles per pause")
    for pause in (float(p) for p in args.pauses.split(",")):
        hangs, seconds = stress(args.cycles, pause, args.cycle_timeout)
        print(f"pause {pause:g} s: {hangs} hang(s) in {args.cycles} teardowns ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
