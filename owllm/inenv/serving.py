"""Running an engine behind OWLLM's OpenAI app: the part both of OWLLM's own servers share
(transformers_app, llamacpp_server).

In-env module: uvicorn and the app's packages come from the env.  The server answers first
(``/health`` is 503 while loading) and loads the model in a daemon thread, so a SIGTERM
during a long load exits at once through uvicorn's own signal handling; a model that cannot
load is reported on stderr and the process exits 1.  The guard sits outside FastAPI: a
refused request never reaches routing or parsing.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .asgi_guard import Guard
from .openai_app import create_app


def serve(engine: Any, load: Callable[[], None], host: str, port: int, name: str,
          **uvicorn_options: Any) -> int:
    """Serve ``engine`` on ``host:port`` until SIGTERM; ``load`` runs in a thread meanwhile.
    The exit status: 0 after a clean stop, 1 when ``load`` raised (its error on stderr,
    prefixed with ``name``)."""
    import uvicorn

    app = Guard(create_app(engine), bind_host=host)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                           access_log=False, **uvicorn_options))
    failed: list[str] = []

    def run_load() -> None:
        try:
            load()
        except BaseException as exc:  # a bad model: say so, then exit non-zero
            failed.append(f"{name}: cannot load model: {type(exc).__name__}: {exc}")
            print(failed[-1], file=sys.stderr, flush=True)
            server.should_exit = True

    threading.Thread(target=run_load, name="owllm-load", daemon=True).start()
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler it
    # found: make that one a clean exit (status 0) instead of death by signal (-15).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.run()
    return 1 if failed else 0
