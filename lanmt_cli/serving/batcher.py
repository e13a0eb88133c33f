"""Dynamic batching: sentences of concurrent requests decoded together, in one call.

Requests wait in one queue. When a decoding thread is free, the batcher takes the
decoder of the oldest request and fills a batch with the sentences of the requests that
name the same decoder, in arrival order, up to `max_tokens` source tokens. It waits for
more only while the batch is under budget and its oldest request has waited less than
`max_wait` seconds; requests that arrived while every decoding thread was busy go at once.
A request larger than what is left of the budget gives part of its sentences and goes to
the back of the queue, and requests not yet started come first in a batch, so a large
request delays the others by one batch, not by all of its own work. Decoding runs on
`workers` threads (default 1), off the event loop; with more than one, a free worker takes
the next batch while others decode theirs, each on its share of the CPU threads. Each
request gets its sentences' results back in order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("lanmt.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` sentences: come back in `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class Stopping(Exception):
    """The server is shutting down and takes no new work."""


@dataclass
class Done:
    """One sentence's result and what it waited for."""

    result: Any  # what the decoding function returned for the sentence
    queue_seconds: float  # from the request's arrival to the start of the sentence's batch
    decode_seconds: float  # decoding time of that batch
    batch_sentences: int  # sentences in that batch, from all requests


@dataclass(eq=False)
class _Job:
    """One request in the queue."""

    key: Hashable
    lines: list[str]
    tokens: list[int]
    arrival: float
    future: asyncio.Future
    results: list[Done | None] = field(default_factory=list)
    next: int = 0  # its first sentence not yet given to a batch
    done: int = 0  # its sentences decoded

    def waiting_tokens(self) -> int:
        return sum(self.tokens[self.next :])


@dataclass
class BatchStats:
    """What one decoded batch was, for metrics."""

    key: Hashable
    sentences: int
    tokens: int
    requests: int
    seconds: float


class Batcher:
    """Queue, coalesce and decode. `run(key, lines)` returns one result per line and runs on
    one of the batcher's `workers` threads (concurrently, with more than one); `on_batch` is
    told about each batch."""

    def __init__(
        self,
        run: Callable[[Hashable, list[str]], list[Any]],
        *,
        max_tokens: int = 4096,
        max_wait: float = 0.0,
        max_queue: int = 1024,
        workers: int = 1,
        on_batch: Callable[[BatchStats], None] | None = None,
    ):
        self.run = run
        self.max_tokens = max(1, max_tokens)
        self.max_wait = max(0.0, max_wait)
        self.max_queue = max(1, max_queue)
        self.workers = max(1, workers)
        self.on_batch = on_batch
        self.queued = 0  # sentences waiting for a batch
        self.queued_tokens = 0
        self.decoding = 0  # sentences in the batches being decoded
        self._pending: deque[_Job] = deque()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="lanmt-decode")
        self._arrived: asyncio.Event | None = None
        self._free: asyncio.Semaphore | None = None  # decoding threads not busy
        self._batches: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None
        self._closing = False
        self._tokens_per_second = 0.0  # recent decoding speed of one worker

    # -- requests ---------------------------------------------------------------------------
    async def submit(self, key: Hashable, lines: list[str], tokens: list[int]) -> list[Done]:
        """Decode `lines` (with `tokens` source tokens each) with decoder `key`.

        Raises QueueFull or Stopping at once; cancelling the caller drops its sentences
        that are still waiting."""
        if self._closing:
            raise Stopping
        if not lines:
            return []
        if self.queued + len(lines) > self.max_queue:
            raise QueueFull(self.retry_after())
        loop = asyncio.get_running_loop()
        self._start(loop)
        job = _Job(
            key, lines, tokens, time.perf_counter(), loop.create_future(), [None] * len(lines)
        )
        self._pending.append(job)
        self.queued += len(lines)
        self.queued_tokens += sum(tokens)
        self._arrived.set()
        try:
            return await job.future
        finally:
            if not job.future.done() or job.future.cancelled():
                self._drop(job)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (1 to 60)."""
        if self._tokens_per_second <= 0:
            return 1
        rate = self._tokens_per_second * self.workers
        return min(60, max(1, math.ceil(self.queued_tokens / rate)))

    def _drop(self, job: _Job) -> None:
        """Forget what is left of a request whose caller went away."""
        if job in self._pending:
            self._pending.remove(job)
            self.queued -= len(job.lines) - job.next
            self.queued_tokens -= job.waiting_tokens()
            job.next = len(job.lines)

    # -- the loop ---------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None:
            self._arrived = asyncio.Event()
            self._free = asyncio.Semaphore(self.workers)
            self._task = loop.create_task(self._loop(), name="lanmt-batcher")

    async def _loop(self) -> None:
        while True:
            await self._free.acquire()
            key = await self._next_key()
            if key is None:  # closing, and nothing left: let the batches in flight finish
                self._free.release()
                if self._batches:
                    await asyncio.wait(self._batches)
                return
            try:
                batch = self._take(key)
            except Exception as err:
                self._free.release()
                self._failed(err)
                continue
            task = asyncio.create_task(self._decode(batch))
            self._batches.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._batches.discard(task)
        self._free.release()
        if not task.cancelled() and task.exception() is not None:
            self._failed(task.exception())

    def _failed(self, err: BaseException) -> None:
        """A fault of the batcher itself: fail what waits, go on."""
        log.error("batching failed", exc_info=err)
        for job in list(self._pending):
            self._drop(job)
            if not job.future.done():
                job.future.set_exception(RuntimeError("batching failed"))

    async def _next_key(self) -> Hashable | None:
        """The decoder of the next batch, once it is full or its oldest request has waited
        `max_wait`."""
        while True:
            while not self._pending:
                if self._closing:
                    return None
                self._arrived.clear()
                await self._arrived.wait()
            first = self._pending[0]
            while self._waiting_tokens(first.key) < self.max_tokens:
                left = first.arrival + self.max_wait - time.perf_counter()
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
                if not self._pending or self._pending[0] is not first:  # it was cancelled
                    break
            if self._pending and self._pending[0] is first:
                return first.key

    def _waiting_tokens(self, key: Hashable) -> int:
        return sum(job.waiting_tokens() for job in self._pending if job.key == key)

    def _take(self, key: Hashable) -> list[tuple[_Job, int]]:
        """Sentences (request, index) of one batch of decoder `key`, within the budget (a
        longer sentence alone): requests not yet started first, then those already partly
        decoded; a request not taken whole moves to the back of the queue."""
        batch: list[tuple[_Job, int]] = []
        budget = self.max_tokens
        taken: list[_Job] = []
        mine = [job for job in self._pending if job.key == key]
        for job in [j for j in mine if j.next == 0] + [j for j in mine if j.next > 0]:
            start = job.next
            while job.next < len(job.lines) and (not batch or job.tokens[job.next] <= budget):
                batch.append((job, job.next))
                budget -= job.tokens[job.next]
                job.next += 1
            if job.next > start:
                taken.append(job)
            if budget <= 0:
                break
        unfinished = [job for job in taken if job.next < len(job.lines)]
        self._pending = deque([j for j in self._pending if j not in taken] + unfinished)
        tokens = self.max_tokens - budget
        self.queued -= len(batch)
        self.queued_tokens -= tokens
        return batch

    async def _decode(self, batch: list[tuple[_Job, int]]) -> None:
        loop = asyncio.get_running_loop()
        key = batch[0][0].key
        lines = [job.lines[i] for job, i in batch]
        tokens = sum(job.tokens[i] for job, i in batch)
        jobs = list(dict.fromkeys(job for job, _ in batch))
        self.decoding += len(batch)
        start = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.run, key, lines)
        except Exception as err:  # the decoder failed: every request in the batch hears it
            for job in jobs:
                self._drop(job)
                if not job.future.done():
                    job.future.set_exception(err)
            return
        finally:
            self.decoding -= len(batch)
        seconds = time.perf_counter() - start
        if seconds > 0:
            rate = tokens / seconds
            old = self._tokens_per_second
            self._tokens_per_second = rate if old <= 0 else 0.8 * old + 0.2 * rate
        for (job, i), result in zip(batch, results, strict=True):
            if job.future.done():  # its caller went away
                continue
            job.results[i] = Done(result, start - job.arrival, seconds, len(batch))
            job.done += 1
            if job.done == len(job.lines):
                job.future.set_result(job.results)
        if self.on_batch is not None:
            self.on_batch(BatchStats(key, len(batch), tokens, len(jobs), seconds))

    # -- shutting down ----------------------------------------------------------------------
    async def close(self) -> None:
        """Take no new requests, finish the queued ones, stop the worker threads."""
        self._closing = True
        if self._task is not None:
            self._arrived.set()
            await self._task
        self._executor.shutdown(wait=True)
