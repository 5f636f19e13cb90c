"""OWLLM's OpenAI-compatible server for transformers models: loads a
``transformers_engine.Engine`` and serves it with ``openai_app.create_app`` (the HTTP layer,
shared with the llama.cpp server) behind ``asgi_guard``.

In-env module (``owllm.inenv``), run with the model env's python (torch, transformers,
fastapi, uvicorn, llguidance; peft / bitsandbytes when the model needs them); it never
imports the host-side ``owllm``::

    python owllm/inenv/__main__.py transformers_app --config-json FILE --host 127.0.0.1 \
        --port N

FILE: {"model_id", "model_path", "model_type": "instruct"|"base", "system_prompt",
"adapter_dir", "use_4bit", "device", "dtype", "generation": {"max_tokens", "temperature",
"top_p"}, "max_model_len"}.

* ``GET /health`` is 503 until the model is loaded *and* one forward pass has run, then 200.
* What the routes accept and answer: ``openai_app``.
* A config that cannot load (a missing model folder) fails in milliseconds, before torch is
  imported; a model that fails to load exits non-zero with the reason on stderr.
* Hostile requests stop at ``asgi_guard`` in front of the app: loopback ``Host`` / ``Origin``
  only (``OWLLM_ALLOWED_HOSTS`` adds names), JSON bodies only, ``OWLLM_MAX_BODY_BYTES``
  (16 MiB), nesting depth, and ``Authorization: Bearer $OWLLM_API_KEY`` on every route but
  ``/health`` when the launcher sets that variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _preflight(argv: list[str]) -> None:
    """Fail in milliseconds, before torch is imported, on a config that cannot load."""
    if "--config-json" not in argv or argv.index("--config-json") + 1 >= len(argv):
        return  # argparse reports it
    try:
        with open(argv[argv.index("--config-json") + 1], encoding="utf-8") as handle:
            cfg = json.load(handle)
    except (OSError, ValueError) as exc:
        sys.exit(f"owllm-server: cannot read the config: {exc}")
    for key, marker in (("model_path", "config.json"), ("adapter_dir", "adapter_config.json")):
        path = cfg.get(key)
        # a relative "org/name" may be a hub id; the launcher hands local paths in absolute
        if isinstance(path, str) and path.startswith(("/", ".", "~")):
            full = os.path.join(os.path.expanduser(path), marker)
            if not os.path.isfile(full):
                sys.exit(f"owllm-server: {key} {path!r} is not usable: {full} does not exist")


# The config is checked before the engine (torch, transformers) is imported: that import
# takes seconds, a missing model folder should fail in milliseconds.
if __name__ == "__main__":
    _preflight(sys.argv[1:])
print("owllm-server: importing torch and transformers", flush=True)
from .openai_app import create_app  # noqa: E402
from .serving import serve  # noqa: E402
from .transformers_engine import Engine  # noqa: E402

__all__ = ["create_app", "main"]  # create_app: the app, re-exported for older importers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OWLLM transformers server")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with open(args.config_json, encoding="utf-8") as handle:
        engine = Engine(json.load(handle))
    # Served at once (/health 503 while loading), loaded in a thread: see serving.py.
    return serve(engine, engine.load, args.host, args.port, "owllm-server")


if __name__ == "__main__":
    sys.exit(main())
