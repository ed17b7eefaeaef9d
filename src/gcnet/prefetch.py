"""Work on the next items in a background thread while the caller uses the current one.

Prediction decodes images (files, video frames) here while the model runs on the previous batch:
Pillow's and FFmpeg's decoders release the GIL, so the two overlap even on a CPU. A thread rather
than DataLoader worker processes, because the items may come from any iterator of the caller's (a
generator, a camera, an open video file) that cannot be handed to another process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1


class Failed:
    """The exception ``fn`` raised for one item, handed back in the item's place."""

    def __init__(self, error: Exception) -> None:
        self.error = error


_END = object()


def prefetch(items: Iterable[T], fn: Callable[[T], R], depth: int) -> Generator[tuple[T, R | Failed], None, None]:
    """``(item, fn(item))`` in the order of ``items``, computed in one background thread at most
    ``depth`` items ahead (memory stays bounded for an endless iterator). An exception ``fn``
    raises for an item comes back as :class:`Failed` in its place, so the caller decides whether
    to skip it; one raised by ``items`` itself ends the iteration and is re-raised here. Closing
    the iterator early stops the thread."""
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    ready: queue.Queue[tuple[Any, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                try:
                    result: Any = fn(item)
                except Exception as err:  # handed to the caller with its item
                    result = Failed(err)
                if not put((item, result)):
                    return
        except BaseException as err:  # the iterable itself failed: the caller re-raises it
            put((_END, err))
            return
        put((_END, None))

    thread = threading.Thread(target=work, name="gcnet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, result = ready.get()
            if item is _END:
                if result is not None:
                    raise result
                return
            yield item, result
    finally:
        stop.set()
        thread.join(timeout=1.0)  # a source blocked on its next item (a camera) ends on its own
