"""A streamed body whose generation lets go of the engine whatever the client does.

In-env module (``owllm.inenv``): standard library only; never imports the host-side ``owllm``.

The app streams a request's chunks from a *synchronous* generator that holds the engine's lock
between its yields (one sequence at a time: one KV cache).  Handed to Starlette as it is, that
generator is pulled one ``next`` at a time from the event loop's side; when the client
disconnects, or Ray Serve cancels the request, the puller is cancelled and the generator is
left suspended with the lock held.  Whether it is ever closed is then up to the garbage
collector: under uvicorn its last reference went at once and the lock was released, but in a
Ray Serve replica the cancelled generator stayed alive, and every later request waited on the
lock forever while ``/health`` still answered 200 (found by the smoke's readiness ladder).

:func:`closing_stream` runs the generator to its end in a thread of its own, which holds the
lock only while it generates, and hands the chunks to the event loop through a queue.  The
lock is released when the generation ends (``max_tokens`` bounds it) even if nobody reads the
chunks, and earlier when the reader goes away: its ``finally`` (cancellation included) asks
the thread to stop at the next chunk.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _produce(chunks: Iterator[Any], put: Callable[[object], None],
             stop: threading.Event) -> None:
    try:
        for chunk in chunks:
            if stop.is_set():
                break
            put(chunk)
    except BaseException as exc:  # handed to the reader, raised there
        put(_Failed(exc))
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()  # exits the generator's own ``with lock:`` when it stopped early
        put(_END)


async def closing_stream(chunks: Iterator[Any]) -> AsyncIterator[Any]:
    """``chunks``' items, produced in a thread of their own (see the module's docstring)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody reads any more
            stop.set()

    threading.Thread(target=_produce, args=(chunks, put, stop), daemon=True,
                     name="owllm-stream").start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
