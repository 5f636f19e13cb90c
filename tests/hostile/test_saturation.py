"""Saturation (issue 13, item 6, the server side): a busy server is not an unhealthy one.

The faults: 60 concurrent slow completions made the transformers server's ``/health`` (a
sync handler, queued behind the generation requests for a worker thread) time out, so a
supervisor killed a server that was only busy; the tool server said ``"status": "ok"`` with
all 32 call slots taken while every call got 503.  Now ``/health`` is an async handler that
answers within 100 ms under load, and the tool server's says ``"saturated"`` (HTTP 200: the
process is alive) while its slots are full.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.hostile._real_servers import ToolProcess, start_model_server, start_tool_server

REQUESTS = 48  # more than the 40 worker threads the sync handlers share


async def _health_under_load(url: str) -> tuple[list[float], list[int], int]:
    """Start REQUESTS slow streaming completions, then time /health; (latencies, statuses,
    completions finished while measuring)."""
    finished = 0

    async def slow(client: httpx.AsyncClient) -> None:
        nonlocal finished
        body = {"prompt": "Once upon a time", "max_tokens": 400, "temperature": 1.0,
                "stream": True}
        async with client.stream("POST", url + "/v1/completions", json=body) as response:
            async for _ in response.aiter_bytes():
                pass
        finished += 1

    latencies: list[float] = []
    statuses: list[int] = []
    limits = httpx.Limits(max_connections=REQUESTS + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits, trust_env=False) as client, \
            httpx.AsyncClient(timeout=10, trust_env=False) as probe:
        tasks = [asyncio.create_task(slow(client)) for _ in range(REQUESTS)]
        try:
            await asyncio.sleep(1.5)  # every request is in: one generates, the rest wait
            for _ in range(12):
                started = time.monotonic()
                try:
                    statuses.append((await probe.get(url + "/health")).status_code)
                except httpx.TimeoutException:
                    statuses.append(0)
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(0.15)
            return latencies, statuses, finished
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def test_transformers_health_answers_fast_under_load(request: pytest.FixtureRequest) -> None:
    server, stop = start_model_server(request, "transformers", "busy", key=None)
    try:
        latencies, statuses, finished = asyncio.run(_health_under_load(server.url))
    finally:
        stop()  # its queue would keep the CPU busy for minutes
    assert finished < REQUESTS // 2, "the load did not last: nothing was measured under it"
    assert statuses == [200] * len(statuses), statuses
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


# -- the tool server --------------------------------------------------------------------------

@pytest.fixture
def tools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToolProcess]:
    server = start_tool_server(tmp_path_factory.mktemp("saturation-tools"))
    yield server
    assert server.stop() == 0


def test_tool_server_health_reports_saturation(tools: ToolProcess) -> None:
    server = tools.endpoint
    slots = server.request("GET", "/health").json()["max_inflight"]
    assert slots == 32
    # Each call times out after 0.5 s (504) but its thread sleeps 3 s, keeping its slot.
    hang = {"tool": "hang", "args": {"seconds": 3}, "id": "h"}
    answers: list[int] = []
    threads = [threading.Thread(target=lambda: answers.append(
        server.request("POST", "/call", json=hang, timeout=10).status_code))
        for _ in range(slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert answers == [504] * slots
    health = server.request("GET", "/health")
    assert health.status_code == 200  # alive: a supervisor must not kill it
    body = health.json()
    assert (body["status"], body["saturated"], body["inflight"]) == ("saturated", True, slots)
    busy = server.request("POST", "/call", json={"tool": "echo", "args": {"text": "x"},
                                                 "id": "e"})
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "busy"
    deadline = time.monotonic() + 10
    while server.request("GET", "/health").json()["status"] != "ok":
        assert time.monotonic() < deadline, "the slots never came back"
        time.sleep(0.1)
    again = server.request("POST", "/call", json={"tool": "echo", "args": {"text": "x"},
                                                  "id": "e"})
    assert again.json()["result"] == "x"
