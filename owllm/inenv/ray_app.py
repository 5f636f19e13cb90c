"""The Ray Serve deployment of a transformers model: one replica = one ``Engine`` behind
OWLLM's own OpenAI app (``transformers_app.create_app``) and request guard, so a replica
answers exactly as ``owllm server start`` of a ``backend: transformers`` model does.

In-env module: it runs in a Ray worker whose python is the model env's (ray[serve] is one of
that env's packages); the driver (``ray_serve``) ships this folder to the replicas as the
``py_modules`` package ``_owllm_inenv``, so the relative imports below resolve there too.
The engine is loaded in the constructor (Serve counts a replica as starting until it
returns) and warmed up by ``Engine.load``; the ASGI app is built after it, through Serve's
``__serve_build_asgi_app__`` hook, because ``create_app`` needs the engine.
"""

from __future__ import annotations

from typing import Any

from ray import serve


@serve.deployment(name="OwllmServer", health_check_period_s=5, health_check_timeout_s=30)
@serve.ingress()
class OwllmServer:
    """One replica: the engine, loaded once, and the app serving it."""

    def __init__(self, config: dict[str, Any]) -> None:
        from .transformers_engine import Engine

        self.engine = Engine(config)
        self.engine.load()

    def __serve_build_asgi_app__(self) -> Any:
        from .asgi_guard import Guard
        from .transformers_app import create_app

        # The guard's settings come from the replica's environment (OWLLM_API_KEY,
        # OWLLM_ALLOWED_HOSTS), which the driver sets through the runtime_env.
        return Guard(create_app(self.engine))

    def check_health(self) -> None:
        """Serve's replica health check: a replica whose engine is not ready is replaced."""
        if not self.engine.ready:
            raise RuntimeError("the engine is not loaded")
