"""The dynamic batcher on its own (no model): batches form within --batch-wait-ms of their first request; callers
that leave free their places; deadlines, late jobs and the background queue."""
from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi")

from radcot.serving.batcher import Batcher, Gone, Late  # noqa: E402


def test_a_request_that_waited_for_the_previous_batch_does_not_wait_again():
    """Under load the next batch is what queued while the previous one ran; it starts at once instead of
    waiting another --batch-wait-ms for companions (that wait added 5 ms to every batch at 16 clients)."""
    calls: list[tuple[float, list[str]]] = []

    def fn(texts):
        calls.append((time.perf_counter(), list(texts)))
        time.sleep(0.8)  # a slow batch: the next requests queue behind it
        return [t.upper() for t in texts]

    async def main():
        b = Batcher(fn, max_batch=8, wait_ms=500)
        await b.start()
        t0 = time.perf_counter()
        first = asyncio.create_task(b.submit(["a"]))
        await asyncio.sleep(0.7)  # "a" waited its 500 ms window alone and is running now (until ~1.3 s)
        late = [asyncio.create_task(b.submit([x])) for x in "bc"]
        results = await asyncio.gather(first, *late)
        await b.stop()
        return t0, results

    t0, results = asyncio.run(main())
    assert results == [["A"], ["B"], ["C"]]
    (t_a, batch_a), (t_bc, batch_bc) = calls
    assert batch_a == ["a"] and batch_bc == ["b", "c"]
    assert t_a - t0 >= 0.45  # a fresh request waits (up to) its window for companions
    # b and c arrived at ~0.7 s and waited for batch "a" (until ~1.3 s); another 500 ms window would start them
    # at ~1.8 s
    assert t_bc - t0 < 1.55, f"the queued batch started {t_bc - t0:.2f} s after the first request"


def _run(coro):
    return asyncio.run(coro)


@pytest.mark.fast
def test_cancelled_callers_free_their_queue_places_and_are_never_run():
    """Issue 26: a request whose client went away kept its place in the queue until its batch, so the next
    clients got QueueFull (503); and its work was generated for nobody."""
    seen: list[str] = []

    def fn(items):
        seen.extend(items)
        return [x.upper() for x in items]

    async def main():
        b = Batcher(fn, max_batch=8, wait_ms=300, max_queue=4)
        await b.start()
        gone = [asyncio.create_task(b.submit([f"gone{i}"])) for i in range(4)]
        await asyncio.sleep(0.05)  # queued: the queue is full
        for t in gone:
            t.cancel()
        await asyncio.sleep(0.01)
        waiting_after_cancel = b.waiting
        results = await asyncio.gather(*(b.submit([f"next{i}"]) for i in range(4)))
        await b.stop()
        return waiting_after_cancel, results

    waiting, results = _run(main())
    assert waiting == 0
    assert results == [[f"NEXT{i}"] for i in range(4)]
    assert not [x for x in seen if x.startswith("gone")]


@pytest.mark.fast
def test_deadline_answers_late_and_finishes_in_the_background():
    """A slow batch: the waiter gives up at its deadline (Late), the job still runs to the end (a cache fill)."""
    done: list[str] = []

    def fn(items):
        time.sleep(0.4)
        done.extend(items)
        return items

    async def main():
        events: list[str] = []
        b = Batcher(fn, max_batch=4, wait_ms=0, event=lambda name, n: events.append(name))
        await b.start()
        t0 = time.perf_counter()
        job = b.enqueue(["slow"], deadline=t0 + 0.1)
        with pytest.raises(Late):
            await b.wait(job, deadline=t0 + 0.1)
        waited = time.perf_counter() - t0
        await asyncio.sleep(0.5)  # the batch finishes meanwhile
        await b.stop()
        return waited, events

    waited, events = _run(main())
    assert 0.09 <= waited < 0.3
    assert done == ["slow"] and "background_done" in events


@pytest.mark.fast
def test_a_job_that_cannot_make_its_deadline_is_declared_late_at_once_and_run_later():
    """With a measured cost of 0.5 s per batch, a 0.2 s deadline cannot be met: the waiter hears so before
    the deadline, and the model first serves the jobs that can still make theirs."""
    order: list[str] = []

    def fn(items):
        time.sleep(0.05)
        order.extend(items)
        return items

    async def main():
        b = Batcher(fn, max_batch=1, wait_ms=0)
        await b.start()
        b.cost.observe(1, 0.5)
        t0 = time.perf_counter()
        tight = b.enqueue(["tight"], deadline=t0 + 0.2)
        loose = b.enqueue(["loose"], deadline=t0 + 5)
        with pytest.raises(Late):
            await b.wait(tight, deadline=t0 + 0.2)
        late_after = time.perf_counter() - t0
        assert await b.wait(loose, deadline=t0 + 5) == ["loose"]
        await asyncio.sleep(0.8)  # idle (no arrival for the time of one query): the late job runs in the background
        await b.stop()
        return late_after

    late_after = _run(main())
    assert late_after < 0.1
    assert order == ["loose", "tight"]


@pytest.mark.fast
def test_background_is_bounded_and_drops_the_oldest():
    ran: list[str] = []
    gate = __import__("threading").Event()

    def fn(items):
        gate.wait(5)
        ran.extend(items)
        return items

    async def main():
        events: list[tuple[str, int]] = []
        b = Batcher(fn, max_batch=1, wait_ms=0, max_background=2, event=lambda name, n: events.append((name, n)))
        await b.start()
        busy = b.enqueue(["busy"])  # occupies the worker until the gate opens
        await asyncio.sleep(0.05)
        now = time.perf_counter()
        jobs = [b.enqueue([f"bg{i}"], deadline=now + 0.01) for i in range(3)]
        for j in jobs:
            with pytest.raises(Late):
                await b.wait(j, deadline=now + 0.01)
        gate.set()
        await b.wait(busy)
        await asyncio.sleep(0.2)
        await b.stop()
        return events

    events = _run(main())
    assert ("dropped_background", 1) in events
    assert ran == ["busy", "bg2", "bg1"]  # the oldest dropped; the newest first


@pytest.mark.fast
def test_a_second_waiter_keeps_a_job_alive_when_the_first_leaves():
    def fn(items):
        time.sleep(0.1)
        return [x * 2 for x in items]

    async def main():
        b = Batcher(fn, max_batch=4, wait_ms=50)
        await b.start()
        job = b.enqueue(["a"])
        assert b.attach(job)
        gone = asyncio.get_running_loop().create_future()
        gone.set_result(True)
        with pytest.raises(Gone):
            await b.wait(job, gone=gone)  # the first client left
        result = await b.wait(job)  # the second still gets it
        await b.stop()
        return result

    assert _run(main()) == ["aa"]


@pytest.mark.fast
def test_a_batch_grows_only_as_far_as_its_deadlines_allow_newest_first():
    """Batches cost 0.1 s per item: with 0.25 s left, two jobs share a batch (three would make all three late).
    A job without a deadline goes first; then the newest, which have the most time left."""
    batches: list[list[str]] = []

    def fn(items):
        batches.append(list(items))
        return items

    async def main():
        b = Batcher(fn, max_batch=8, wait_ms=20)
        await b.start()
        b.cost.observe(1, 0.1)
        b.cost.observe(4, 0.4)
        t0 = time.perf_counter()
        jobs = [b.enqueue([x], deadline=t0 + 0.25) for x in "abc"] + [b.enqueue(["patient"])]
        out = await asyncio.gather(*(b.wait(j, deadline=j.deadline) for j in jobs), return_exceptions=True)
        await b.stop()
        return out

    out = _run(main())
    assert batches[0] == ["patient", "c"] and out[2:] == [["c"], ["patient"]]


@pytest.mark.fast
def test_a_job_that_cannot_start_in_time_is_late_when_it_arrives():
    """While a 0.5 s batch runs, a job with 0.2 s left cannot make it: its waiter hears so at once."""
    gate = __import__("threading").Event()

    def fn(items):
        gate.wait(5)
        return items

    async def main():
        b = Batcher(fn, max_batch=1, wait_ms=0)
        await b.start()
        b.cost.observe(1, 0.5)
        busy = b.enqueue(["busy"])
        await asyncio.sleep(0.05)  # running
        t0 = time.perf_counter()
        with pytest.raises(Late):
            await b.wait(b.enqueue(["tight"], deadline=t0 + 0.2), deadline=t0 + 0.2)
        waited = time.perf_counter() - t0
        gate.set()
        await b.wait(busy)
        await b.stop()
        return waited

    assert _run(main()) < 0.05


@pytest.mark.fast
def test_typed_boundary():
    """Issue 26: expand_batch("text") expanded each character; a generator yielded []; None items were str()-ed.
    Checked before anything is loaded or generated."""
    from radcot.serving.expander import as_texts

    with pytest.raises(TypeError, match=r"list of query strings, got one str \('where'\)"):
        as_texts("where")
    assert as_texts(t for t in ("a", "b")) == ["a", "b"]  # any iterable, read once
    with pytest.raises(TypeError, match="query 1 is NoneType"):
        as_texts(["a", None])
    with pytest.raises(TypeError, match="query 0 is int"):
        as_texts([7])
    with pytest.raises(TypeError, match="iterable of query strings, got int"):
        as_texts(7)
