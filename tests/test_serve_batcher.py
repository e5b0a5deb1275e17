"""The dynamic batcher on its own (no model): batches form within --batch-wait-ms of their first request."""
from __future__ import annotations

import asyncio
import time

import pytest

pytest.importorskip("fastapi")

from radcot.serving.batcher import Batcher  # noqa: E402


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
