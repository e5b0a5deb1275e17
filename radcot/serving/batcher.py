"""Dynamic batching for the services: concurrent requests share one model call, within their deadlines.

Requests queue :class:`Job` s (their items: query texts, or ``(prompt, parameters)`` pairs for ``radcot
teacher-serve``). One worker task takes the first waiting job, then keeps taking jobs until the batch holds
``max_batch`` items or ``wait_ms`` have passed since that job arrived, and runs the batch function once in
a worker thread (the event loop keeps accepting requests meanwhile). Each job gets its slice of the results.

Who waits for a job decides what happens to it:

- A job nobody waits for any more (its clients went away) is dropped before it runs, and its items stop
  counting against ``max_queue`` at once: clients that leave never cause 503s for the next ones.
- A job with a deadline (:meth:`Batcher.wait`) whose waiters gave up at their deadline is kept, as a
  *background* job, when they ask for it (``keep``): it runs when the model is idle (no live job waits and
  none arrived within the time one query takes), in batches that take at most half the shortest recent
  deadline, to fill a cache. At most ``max_background`` items wait so; the oldest are dropped first.
- A job that cannot finish within its deadline even in a batch of its own right after the batch running
  now (by :class:`BatchCost`, the measured cost of recent batches) is declared late -- when it arrives, or
  when a batch is formed: its waiters answer at once (the service falls back to the unexpanded query)
  instead of at the deadline, and the job goes to the background.
- Batches take jobs without a deadline first (oldest first), then the newest jobs with one, and grow only
  while every job in them can still make its deadline: under overload the model's time goes to the jobs
  that can still be answered in time, not to the oldest ones, which would all be late.

Example:
    >>> batcher = Batcher(expander.generate, max_batch=32, wait_ms=5)  # doctest: +SKIP
    >>> await batcher.start(); cots = await batcher.submit(["q1", "q2"])  # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from radcot.records import RadcotError

logger = logging.getLogger("radcot.serving")

#: batch costs remembered by :class:`BatchCost`
_COST_WINDOW = 32


class QueueFull(RadcotError):
    """Too many queries are waiting; the client should retry after ``retry_after`` seconds."""

    def __init__(self, waiting: int, limit: int, retry_after: int):
        super().__init__(f"{waiting} queries are already waiting (limit {limit}); retry in {retry_after} s")
        self.retry_after = retry_after


class Late(Exception):
    """A job's results will not (or did not) come within the deadline."""


class Gone(Exception):
    """The waiter's client went away."""


class BatchCost:
    """The seconds a batch of ``n`` items takes: a least-squares line ``a + b * n`` through recent batches.

    Example:
        >>> c = BatchCost(); c.observe(1, 0.2); c.observe(4, 0.5)
        >>> round(c.estimate(2), 3), round(c.estimate(8), 3)
        (0.3, 0.9)
    """

    def __init__(self, window: int = _COST_WINDOW):
        self._points: collections.deque[tuple[int, float]] = collections.deque(maxlen=window)

    def observe(self, n: int, seconds: float) -> None:
        self._points.append((n, seconds))

    def estimate(self, n: int) -> float | None:
        """Seconds for ``n`` items (``None`` before any batch was measured); never below the cheapest seen."""
        if not self._points:
            return None
        xs, ys = zip(*self._points)
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        if var == 0:
            return my * n / mx  # one batch size seen: proportional
        slope = max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var)
        return max(min(ys), my + slope * (n - mx))


@dataclass(eq=False)
class Job:
    """Items queued together, their results' future, and who waits for them."""

    items: list
    future: asyncio.Future
    late: asyncio.Future  # set when the batcher declares the job late
    deadline: float | None = None  # perf_counter time of the latest waiter's deadline (None: one waits forever)
    waiters: int = 1
    keep: bool = False  # run it even when nobody waits (a waiter asked for it at its deadline)
    state: str = "live"  # live -> batched -> running -> done; live -> late -> background; ... -> dropped
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Gather concurrent requests into batches for ``fn(items) -> results`` (one result per item).

    Args:
        fn: the batch function, run in one worker thread (thread-safe or not: calls never overlap).
        max_batch: most items per call (a single larger job runs alone, whole).
        wait_ms: how long the first job of a batch waits for others.
        max_queue: most items of live jobs waiting; more raise :class:`QueueFull` at once (HTTP 503).
        max_background: most items of background jobs waiting (default ``max_queue``; 0: none are kept).
        observe: optional callback ``observe(batch_size, seconds)`` after each call (metrics).
        event: optional callback ``event(name, n)``: ``dropped_gone``, ``dropped_background``, ``late``,
            ``background_done`` (metrics).
        on_depth: optional callback ``on_depth(waiting)`` whenever the live items waiting change.
    """

    def __init__(self, fn: Callable[[list], Sequence[Any]], max_batch: int = 32, wait_ms: float = 5.0,
                 max_queue: int = 1024, observe: Callable[[int, float], None] | None = None,
                 max_background: int | None = None, event: Callable[[str, int], None] | None = None,
                 on_depth: Callable[[int], None] | None = None):
        if max_batch < 1 or not wait_ms >= 0 or max_queue < 1 or (max_background is not None and max_background < 0):
            raise ValueError(f"max_batch and max_queue must be >= 1, wait_ms and max_background >= 0, got "
                             f"{max_batch}, {max_queue}, {wait_ms}, {max_background}")
        self.fn, self.max_batch, self.wait_s, self.max_queue = fn, max_batch, wait_ms / 1000.0, max_queue
        self.max_background = max_queue if max_background is None else max_background
        self.observe, self.event, self.on_depth = observe, event, on_depth
        self.cost = BatchCost()
        self.waiting = 0  # items of live jobs queued and not yet running
        self.background = 0  # items of background jobs queued
        self._live: collections.deque[Job] = collections.deque()
        self._bg: collections.deque[Job] = collections.deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="radcot-generate")
        self._last_batch_s = 0.05
        self._busy_until: float | None = None  # the estimated end of the batch running now
        self._last_arrival = 0.0  # perf_counter time of the last enqueue
        self._recent_budget: float | None = None  # the shortest deadline budget (deadline - arrival) seen lately

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="radcot-batcher")

    async def stop(self) -> None:
        """Finish every live job (the drain of a graceful shutdown), drop background ones, stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        for job in list(self._bg):
            self._drop(job, "dropped_background")
        self._pool.shutdown(wait=True)

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained (at least 1), for ``Retry-After``."""
        batches = self.waiting / self.max_batch + 1
        return max(1, int(batches * self._last_batch_s + 0.999))

    # ----------------------------------------------------------------------------------- the requests' side

    def enqueue(self, items: Sequence[Any], deadline: float | None = None) -> Job:
        """Queue ``items`` as one job (one waiter); ``deadline`` is a ``time.perf_counter()`` time or ``None``.

        Raises:
            QueueFull: ``max_queue`` items of live jobs are already waiting.
            RadcotError: the batcher is not running.
        """
        if self._task is None or self._task.done():
            raise RadcotError("the batcher is not running (the service is starting or shutting down)")
        items = list(items)
        if self.waiting + len(items) > self.max_queue and self.waiting > 0:
            raise QueueFull(self.waiting, self.max_queue, self.retry_after())
        loop = asyncio.get_running_loop()
        job = Job(items, loop.create_future(), loop.create_future(), deadline)
        self._last_arrival = job.enqueued
        if deadline is not None:
            budget = deadline - job.enqueued
            self._recent_budget = budget if self._recent_budget is None else min(budget, 0.9 * self._recent_budget + 0.1 * budget)
        if not self._admissible(job):
            job.state = "late"  # answered at once: its waiter falls back, the job goes to the background
            job.late.set_result(True)
            self._emit("late", len(items))
            return job
        self._live.append(job)
        self._count(len(items))
        self._wake.set()
        return job

    def _admissible(self, job: Job) -> bool:
        """False when ``job`` cannot make its deadline even if it runs alone right after the batch running now."""
        alone = self.cost.estimate(len(job.items))
        if job.deadline is None or alone is None:
            return True
        now = time.perf_counter()
        return max(now, self._busy_until or now) + alone <= job.deadline

    def attach(self, job: Job, deadline: float | None = None) -> bool:
        """One more waiter for a queued or running ``job`` (a request for the same items); False when the job is
        over (done or dropped: queue a new one). A background job becomes live again."""
        if job.state in ("done", "dropped") or job.late.done():
            return False
        job.waiters += 1
        job.deadline = None if deadline is None or (job.waiters > 1 and job.deadline is None) else \
            max(deadline, job.deadline or deadline)
        if job.state == "background":
            self._bg.remove(job)
            self.background -= len(job.items)
            job.state = "live"
            self._live.append(job)
            self._count(len(job.items))
            self._wake.set()
        return True

    def release(self, job: Job, keep: bool = False) -> None:
        """One waiter less; a queued job nobody waits for is dropped, or kept in the background (``keep``)."""
        job.waiters -= 1
        job.keep = job.keep or keep
        if job.waiters > 0 or job.state not in ("live", "late", "batched"):
            return
        if job.state == "batched":  # taken into a batch still gathering: it runs only if kept
            if not job.keep:
                self._count(-len(job.items))
                self._drop(job, "dropped_gone")
            return
        if job.state == "live":
            self._live.remove(job)
            self._count(-len(job.items))
        if job.keep:
            self._to_background(job)
        else:
            self._drop(job, "dropped_gone")

    async def wait(self, job: Job, deadline: float | None = None, gone: asyncio.Future | None = None,
                   keep: bool = True) -> list:
        """The job's results, waiting until ``deadline`` (``perf_counter`` time) at most.

        Raises:
            Late: the deadline passed, or the batcher declared the job late; with ``keep`` the job goes on in
                the background.
            Gone: ``gone`` (the client went away) finished first; the job is dropped if nobody else waits.
        """
        waits = [job.future, job.late] + ([gone] if gone is not None else [])
        timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.release(job, keep=False)
            raise
        if job.future.done() and not job.future.cancelled():
            self.release(job)
            return job.future.result()  # the batch's exception, if it failed
        if gone is not None and gone.done():
            self.release(job, keep=False)
            raise Gone()
        self.release(job, keep=keep)
        raise Late()

    async def submit(self, items: Sequence[Any]) -> list:
        """Queue ``items`` and wait for their results (in order); a cancelled caller drops its job.

        Raises:
            QueueFull: ``max_queue`` items are already waiting.
            RadcotError: the batcher is not running.
        """
        return await self.wait(self.enqueue(items))

    # ----------------------------------------------------------------------------------------- the queue

    def _count(self, n: int) -> None:
        self.waiting += n
        if self.on_depth is not None:
            self.on_depth(self.waiting)

    def _emit(self, name: str, n: int = 1) -> None:
        if self.event is not None:
            self.event(name, n)

    def _to_background(self, job: Job) -> None:
        if len(job.items) > self.max_background:
            self._drop(job, "dropped_background")
            return
        job.state = "background"
        self._bg.append(job)
        self.background += len(job.items)
        while self.background > self.max_background:
            self._drop(self._bg[0], "dropped_background")
        self._wake.set()

    def _drop(self, job: Job, why: str) -> None:
        if job.state == "background":
            self._bg.remove(job)
            self.background -= len(job.items)
        job.state = "dropped"
        job.future.cancel()
        self._emit(why, len(job.items))

    def _declare_late(self, job: Job) -> None:
        """``job`` cannot finish in time: its waiters answer now, and their release keeps it (or not)."""
        self._live.remove(job)
        self._count(-len(job.items))
        job.state = "late"
        job.late.set_result(True)
        self._emit("late", len(job.items))

    # ---------------------------------------------------------------------------------------- the worker

    def _fits(self, job: Job, size: int, now: float, left: float) -> bool | None:
        """Whether a batch of ``size + len(job)`` items ends before ``job``'s deadline and within ``left`` seconds
        (the least time left to the jobs already in the batch); True without deadlines or a cost estimate;
        ``None`` when ``job`` cannot make its deadline even alone."""
        alone, together = self.cost.estimate(len(job.items)), self.cost.estimate(size + len(job.items))
        if alone is None:
            return True
        mine = float("inf") if job.deadline is None else job.deadline - now
        if alone > mine:
            return None
        return together <= min(mine, left)

    async def _next_wait(self, until: float) -> bool:
        """Wait for a new job until ``until`` (``perf_counter``); False when the time is up."""
        left = until - time.perf_counter()
        if left <= 0:
            return False
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), left)
        except asyncio.TimeoutError:
            return False
        return True

    def _pick(self) -> Job | None:
        """The next live job for a batch: the oldest without a deadline, else the newest with one (under overload
        the newest have the most time left: serving the oldest first would make every job late)."""
        for job in self._live:
            if job.deadline is None:
                return job
        return self._live[-1] if self._live else None

    def _expire(self, now: float) -> None:
        """Declare late every live job that cannot make its deadline even alone (its waiters answer now)."""
        for job in [j for j in self._live if j.deadline is not None]:
            alone = self.cost.estimate(len(job.items))
            if alone is not None and now + alone > job.deadline:
                self._declare_late(job)

    async def _gather(self) -> list[Job]:
        """The next batch of live jobs (empty when none is left that can make its deadline)."""
        jobs: list[Job] = []
        size, until, soonest = 0, None, float("inf")  # soonest: the earliest deadline in the batch
        self._expire(time.perf_counter())
        while size < self.max_batch:
            job = self._pick()
            if job is None:
                if until is None or not await self._next_wait(until):
                    break
                self._expire(time.perf_counter())
                continue
            now = time.perf_counter()
            fits = self._fits(job, size, now, soonest - now)
            if fits is None:
                self._declare_late(job)
                continue
            if jobs and (not fits or size + len(job.items) > self.max_batch):
                break
            self._live.remove(job)
            job.state = "batched"  # still counted as waiting until the batch runs
            jobs.append(job)
            size += len(job.items)
            if job.deadline is not None:
                soonest = min(soonest, job.deadline)
            if until is None:  # the window of the batch's first job (one that waited already does not wait again)
                until = job.enqueued + self.wait_s
        return jobs

    def _background_batch(self) -> list[Job]:
        """Background jobs for the idle model: as many as fit in half the shortest recent deadline (a live request
        that arrives meanwhile still has time after it), newest first."""
        budget = None if self._recent_budget is None else self._recent_budget / 2
        jobs, size = [], 0
        while self._bg:
            n = size + len(self._bg[-1].items)
            est = self.cost.estimate(n)
            if jobs and (n > self.max_batch or (budget is not None and est is not None and est > budget)):
                break
            job = self._bg.pop()
            self.background -= len(job.items)
            jobs.append(job)
            size = n
        return jobs

    def _idle(self) -> bool:
        """No live job waits, and none arrived within the time one query takes (more are likely on the way)."""
        if self._live:
            return False
        gap = self.cost.estimate(1) or 0.0
        return time.perf_counter() - self._last_arrival >= gap

    async def _run_batch(self, jobs: list[Job]) -> None:
        jobs = [j for j in jobs if j.state != "dropped"]  # left while the batch was gathering
        if not jobs:
            return
        for j in jobs:
            if j.state == "batched":
                self._count(-len(j.items))
            j.state = "running"
        items = [t for j in jobs for t in j.items]
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        est = self.cost.estimate(len(items))
        self._busy_until = None if est is None else t0 + est
        try:
            results = await loop.run_in_executor(self._pool, self.fn, items)
        except Exception as e:  # noqa: BLE001 - handed to every waiting request
            self._busy_until = None
            logger.exception("batch of %d items failed", len(items))
            for j in jobs:
                j.state = "done"
                if not j.future.done():
                    j.future.set_exception(e)
                    if j.waiters <= 0:
                        j.future.exception()  # retrieved: nobody waits for a background job's error
            return
        self._busy_until = None
        self._last_batch_s = time.perf_counter() - t0
        self.cost.observe(len(items), self._last_batch_s)
        if self.observe is not None:
            self.observe(len(items), self._last_batch_s)
        pos = 0
        for j in jobs:
            j.state = "done"
            if not j.future.done():
                j.future.set_result(list(results[pos:pos + len(j.items)]))
            if j.waiters <= 0:
                self._emit("background_done", len(j.items))
            pos += len(j.items)

    async def _run(self) -> None:
        while True:
            jobs = await self._gather()
            if not jobs and self._bg and not self._stopping and self._idle():
                jobs = self._background_batch()
            if jobs:
                await self._run_batch(jobs)
                continue
            if self._stopping and not self._live:
                return
            if self._live:
                continue
            self._wake.clear()
            if self._bg and not self._stopping:  # background work waits for a quiet moment
                wait = max(0.001, (self.cost.estimate(1) or 0.0) - (time.perf_counter() - self._last_arrival))
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._wake.wait()


__all__ = ["BatchCost", "Batcher", "Gone", "Job", "Late", "QueueFull"]
