"""CPU scheduling shared by the CPU runners: micro-batches, intra-op threads, worker threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch

from detector.preprocess import to_tensor
from detector.runners.base import RawOutputs

Forward = Callable[[torch.Tensor], RawOutputs]  # (N, 3, S, S) float32 channels-last -> (loc, scores)


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Runs the block with ``n`` torch intra-op threads on this thread (``None``: as is)."""
    previous = torch.get_num_threads()
    if n is None or n == previous:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class MicroBatcher:
    """Runs a model call over a CPU batch in micro-batches, within a thread budget.

    ``num_threads``: ``None`` leaves torch's setting alone and runs on the calling thread.
    ``n``: each call runs with ``n`` intra-op threads, restored afterwards; a batch of several
    micro-batches instead runs them on ``n`` worker threads of one intra-op thread each (whole
    frames in parallel, no synchronisation inside a layer). Never more than ``n`` busy threads.
    ``micro_batch``: frames per model call unless a runner asks for another size.
    """

    def __init__(self, *, num_threads: int | None, micro_batch: int) -> None:
        self.num_threads = num_threads
        self.micro_batch = micro_batch
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def plan(self, batch: int, micro_batch: int | None = None) -> tuple[int, bool]:
        """(frames per model call, whether the calls go to the worker threads) for a batch."""
        micro_batch = micro_batch or self.micro_batch
        workers = self.num_threads or 1
        if workers == 1:
            return micro_batch, False
        size = min(micro_batch, -(-batch // workers))
        return size, -(-batch // size) > 1

    def postprocess_threads(self, batch: int) -> int | None:
        """~1 ms per batch of 16 on one thread. After a batch split over the workers it runs on
        one, so that no OpenMP team of this thread spins on a core the next batch's workers need."""
        _, on_workers = self.plan(batch)
        return 1 if on_workers else self.num_threads

    def run(self, frames: torch.Tensor, forward: Forward, micro_batch: int | None = None) -> RawOutputs:
        """(B, S, S, 3) uint8 in micro-batches, on the calling thread or on the worker threads.

        Each micro-batch is converted to float where it runs: in a worker, on its one thread.
        """
        size, on_workers = self.plan(frames.shape[0], micro_batch)
        chunks = frames.split(size)
        if not on_workers:
            with intra_op_threads(self.num_threads):
                outs = [_forward_frames(forward, c) for c in chunks]
        else:
            outs = list(self._worker_pool().map(lambda c: _forward_single_threaded(forward, c), chunks))
            # The workers' torch.set_num_threads(1) also set the default new threads start from.
            torch.set_num_threads(torch.get_num_threads())
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def close(self) -> None:
        """Stops the worker threads, if any were started (they also stop at exit)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def _worker_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="maskjobs-detector")
        return self._pool


class CpuRunner:
    """A float CPU runner: ``forward`` (one model call) over the :class:`MicroBatcher`'s micro-batches.

    Subclasses give ``forward`` and ``backend``; :mod:`.eager` and :mod:`.fused` are the two.
    """

    backend = "cpu"

    def __init__(self, batcher: MicroBatcher) -> None:
        self.batcher = batcher

    def forward(self, x: torch.Tensor) -> RawOutputs:
        """One model call: (N, 3, S, S) float32, channels-last -> ``(loc, scores)``."""
        raise NotImplementedError

    def raw(self, frames: torch.Tensor) -> RawOutputs:
        return self.batcher.run(frames, self.forward)

    def postprocess_threads(self, batch: int) -> int | None:
        return self.batcher.postprocess_threads(batch)

    def close(self) -> None:
        self.batcher.close()


def _forward_frames(forward: Forward, frames: torch.Tensor) -> RawOutputs:
    """(N, S, S, 3) uint8 -> one model call."""
    return forward(to_tensor(frames).contiguous(memory_format=torch.channels_last))


def _forward_single_threaded(forward: Forward, frames: torch.Tensor) -> RawOutputs:
    """Runs in a worker thread: one intra-op thread (a per-thread OpenMP setting)."""
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    with torch.inference_mode():
        return _forward_frames(forward, frames)
