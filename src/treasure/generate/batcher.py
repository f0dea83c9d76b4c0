"""Request batching for the server: generations asked for together share one `Generator.generate_batch` call.

    batcher = Batcher(generator, max_batch_size=16, wait_ms=10)
    future = batcher.submit(messages, markers, mode="fixed", max_new_tokens=64, temperature=0.0)
    gen = future.result()  # a Generation, or the batch's exception raised again
    batcher.close()

One worker thread feeds the model. It takes the oldest waiting job and waits for others to join it: until no job
has arrived for `wait_ms`, or the batch is full, and at most 5 x `wait_ms` after the oldest job arrived (jobs that
arrived while the previous batch ran are already waiting, so under load there is no wait at all). Then it runs
every waiting job that can share the oldest one's batch, up to `max_batch_size`, as one batch. Jobs that cannot
share it wait for a later batch, oldest first. With `max_batch_size=1` every job runs alone, in arrival
order: the one-at-a-time server of before.

Which jobs share a batch: the same mode, max_new_tokens and decoding settings. Greedy jobs batch whatever their
seed (greedy decoding draws no random numbers). Sampled jobs without a seed batch when their temperature and top_p
agree; a sampled job with a seed runs alone, because a batch's random draws depend on its other rows and a seeded
request must give the answer it gives alone. Streaming is not batched: `Generator.stream` runs one request at a time
under the Generator's lock, which `generate_batch` takes too, so the model runs one batch or stream at a time.

An exception in a batch is set on every job of that batch; the worker goes on with the next. A job whose future is
cancelled before its batch starts (its client went away) is left out of the batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from treasure.generate.engine import Generation, Generator

log = logging.getLogger(__name__)
_STOP = object()  # put on the queue by close(): the worker finishes its batch, fails the rest and exits


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is shutting down) before this job ran."""


@dataclass
class _Job:
    messages: list[dict]
    markers: dict[str, Any] | None
    kwargs: dict[str, Any]  # mode, max_new_tokens, temperature, top_p, seed: as generate_batch takes them
    key: Hashable
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


def batch_key(mode: str, max_new_tokens: int, temperature: float, top_p: float, seed: int | None) -> Hashable:
    """What jobs must share to run in one batch (see the module docstring); a unique object runs a job alone."""
    if not temperature or temperature <= 0:
        return (mode, max_new_tokens, "greedy")
    if seed is not None:
        return object()
    return (mode, max_new_tokens, "sample", float(temperature), float(top_p))


class Batcher:
    """Groups submitted generations into batches for one Generator, on one worker thread (started on first use)."""

    MAX_WAITS = 5  # a batch waits at most this many `wait_ms` after its first job arrived

    def __init__(self, generator: Generator, *, max_batch_size: int = 16, wait_ms: float = 10.0):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if wait_ms < 0:
            raise ValueError(f"wait_ms must be 0 or more, got {wait_ms}")
        self.generator = generator
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run (jobs left out when cancelled)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()  # guards _thread and _closed
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(
        self,
        messages: list[dict],
        markers: dict[str, Any] | None = None,
        *,
        mode: str,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Future[Generation]:
        """Queue one generation (arguments as `Generator.generate`'s); its future holds the Generation or the error."""
        kwargs = {"mode": mode, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                  "seed": seed}  # fmt: skip
        job = _Job(messages, markers, kwargs, batch_key(**kwargs))
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="treasure-batcher", daemon=True)
                self._thread.start()
            self._queue.put(job)
        return job.future

    def close(self, timeout: float = 5.0) -> None:
        """Stop taking jobs; jobs not yet started fail with BatcherClosed. Waits at most `timeout` seconds for a
        running batch (a generation cannot be interrupted; the worker is a daemon thread, so exit never waits)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._queue.put(_STOP)
        if thread is not None:
            thread.join(timeout)

    # ------------------------------------------------------------------------------------------- the worker

    def _work(self) -> None:
        waiting: list[_Job] = []
        stopping = False
        while not stopping and not self._closed:
            if not waiting:
                item = self._queue.get()
                if item is _STOP:
                    break
                waiting.append(item)
            head = waiting[0]
            # A burst of requests reaches the queue spread out (each is parsed and checked first): wait while they
            # keep coming, up to a cap, so that one burst makes one batch, not a small one and then the rest.
            cap = head.arrived + self.MAX_WAITS * self.wait_s
            last = max(job.arrived for job in waiting)
            mates = sum(job.key == head.key for job in waiting)
            while mates < self.max_batch_size:
                left = min(last + self.wait_s, cap) - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                waiting.append(item)
                last = item.arrived
                mates += item.key == head.key
            batch, rest = [], []
            for job in waiting:
                (batch if job.key == head.key and len(batch) < self.max_batch_size else rest).append(job)
            waiting = rest
            if stopping or self._closed:
                waiting = batch + waiting
            else:
                self._run(batch)
        while True:  # closed: nothing queued or waiting will run
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                waiting.append(item)
        for job in waiting:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(BatcherClosed("the server shut down before this request ran"))

    def _run(self, batch: list[_Job]) -> None:
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        self.batch_sizes[len(batch)] += 1
        # Jobs of one key share these settings (a seed only matters to a sampled job, which runs alone).
        settings = batch[0].kwargs
        try:
            outs = self.generator.generate_batch(
                [job.messages for job in batch],
                [job.markers for job in batch],
                batch_size=len(batch),
                **settings,
            )
        except BaseException as e:
            log.exception("a batch of %d failed", len(batch))
            for job in batch:
                job.future.set_exception(e)
            if not isinstance(e, Exception):  # KeyboardInterrupt and the like: the worker stops too
                raise
            return
        for job, out in zip(batch, outs, strict=True):
            job.future.set_result(out)
