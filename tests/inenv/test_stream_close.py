"""closing_stream: a streamed generation holding the engine's lock lets it go when its reader
is cancelled or simply never reads again (the Ray Serve replica that hung, issue 17 ladder)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from owllm.inenv.stream_close import closing_stream


def locked_generation(lock: threading.Lock, produced: list[int], steps: int = 50,
                      delay: float = 0.01) -> Iterator[str]:
    """The app's shape: the lock held from the first chunk to the last."""
    with lock:
        for i in range(steps):
            time.sleep(delay)
            produced.append(i)
            yield f"chunk {i}"


def released_within(lock: threading.Lock, seconds: float) -> bool:
    if lock.acquire(timeout=seconds):
        lock.release()
        return True
    return False


def test_all_chunks_arrive_in_order_and_the_lock_is_free_after() -> None:
    lock, produced = threading.Lock(), []

    async def read() -> list[str]:
        return [c async for c in closing_stream(locked_generation(lock, produced, 5, 0))]

    assert asyncio.run(read()) == [f"chunk {i}" for i in range(5)]
    assert released_within(lock, 0)


def test_a_cancelled_reader_stops_the_generation_and_frees_the_lock() -> None:
    lock, produced = threading.Lock(), []

    async def cancelled() -> None:
        async def read() -> None:
            async for _ in closing_stream(locked_generation(lock, produced)):
                await asyncio.sleep(0)
        task = asyncio.create_task(read())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    assert released_within(lock, 5)
    assert len(produced) < 50  # stopped early, not run to max_tokens


def test_a_reader_that_never_reads_again_does_not_hold_the_lock() -> None:
    """The Ray failure: the body iterator is kept alive, suspended, never closed."""
    lock, produced = threading.Lock(), []
    kept = []

    async def abandon() -> bool:
        stream = closing_stream(locked_generation(lock, produced, 20))
        kept.append(stream)  # a live reference, as the replica kept one
        assert await stream.__anext__() == "chunk 0"
        return await asyncio.to_thread(released_within, lock, 5)  # the loop still runs

    assert asyncio.run(abandon())
    assert produced == list(range(20))  # ran to its bound, then let go


def test_an_error_in_the_generation_reaches_the_reader() -> None:
    def broken() -> Iterator[str]:
        yield "first"
        raise ValueError("engine failed")

    async def read() -> list[str]:
        return [c async for c in closing_stream(broken())]

    with pytest.raises(ValueError, match="engine failed"):
        asyncio.run(read())
