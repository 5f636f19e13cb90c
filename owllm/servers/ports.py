"""Port choice that cannot race between OWLLM processes sharing a home.

A port is handed out under one file lock per home, and only after it is recorded in the
StateStore (the caller writes the STARTING row before the lock is released), so two starts can
never get the same port.  Other programs are covered by a bind test; a server that still loses
the race fails to bind, exits early, and the manager retries once with another port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from owllm.state_store import LIVE_STATUSES  # noqa: F401  (re-export: callers import it here)


def is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we could bind it right now.

    SO_REUSEADDR as the servers themselves bind (uvicorn, http.server): a port whose last
    connections linger in TIME_WAIT is free for them, and must read free here too."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_port(hint: int | None, taken: Iterable[int], host: str = "127.0.0.1",
                attempts: int = 50) -> int:
    """The hint when it is free and not claimed by a live server of ours, else a free port."""
    claimed = set(taken)
    if hint and hint not in claimed and is_free(hint, host):
        return hint
    for _ in range(attempts):
        port = ephemeral_port(host)
        if port not in claimed:
            return port
    raise OSError("could not find a free port")  # pragma: no cover - the OS ran out
