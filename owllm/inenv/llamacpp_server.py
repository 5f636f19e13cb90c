"""OWLLM's OpenAI server over llama.cpp: the engine-agnostic app (``openai_app``) serving a
:class:`~llamacpp_engine.LlamaCppEngine`.

In-env module (``owllm.inenv``), run with the ``llamacpp`` env's python; it never imports
the host-side ``owllm``::

    python owllm/inenv/__main__.py llamacpp_server --config-json RUN.json --host 127.0.0.1 \
        --port 8080 [--n_threads 2 ...]

The same app serves the transformers engine, so a request behaves the same on both (errors,
tools, streaming, usage, the config defaults, the guard).  What is llama.cpp's own is here:

* ``server_args`` (``--n_threads 2``, ``--n_batch=256``) are llama-cpp-python
  ``ModelSettings`` fields, converted and checked by its pydantic model, passed to
  ``llama_cpp.Llama``.
* ``extra_buffers: false`` in the run config loads the weights without llama.cpp's extra
  buffer types (see :func:`disable_extra_buffers`).
* ``/health`` answers 200 only once the model has loaded (503 before), and a model that
  cannot load ends the process with a non-zero status.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any


def server_args_to_settings(extra: list[str]) -> dict[str, str]:
    """The model's ``server_args`` (``--n_threads 2``, ``--n_batch=256``) as name -> text."""
    out: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--"):
            raise SystemExit(f"llamacpp_server: unexpected argument {item!r} "
                             "(server_args are --name value pairs)")
        name, eq, value = item[2:].partition("=")
        if not eq:
            value = next(items, None)  # type: ignore[assignment]
            if value is None:
                raise SystemExit(f"llamacpp_server: {item} needs a value")
        out[name.replace("-", "_")] = value
    return out


def llama_overrides(settings: dict[str, str]) -> dict[str, Any]:
    """``server_args`` as ``llama_cpp.Llama`` keyword arguments: typed and checked by
    llama-cpp-python's ``ModelSettings`` (an unknown name or a bad value exits with the
    field named); server-only fields (``model_alias``, ``chat_format``...) are refused."""
    if not settings:
        return {}
    from llama_cpp import Llama
    from llama_cpp.server.settings import ModelSettings
    from pydantic import ValidationError

    accepted = set(inspect.signature(Llama.__init__).parameters) - {"self", "model_path"}
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise SystemExit(f"llamacpp_server: server_args {', '.join(unknown)} are not "
                         "llama_cpp.Llama parameters")
    try:
        parsed = ModelSettings(model="-", **settings)
    except ValidationError as exc:
        raise SystemExit(f"llamacpp_server: bad server_args: {exc}") from None
    return {name: getattr(parsed, name) for name in settings}


def disable_extra_buffers() -> None:
    """Load weights without llama.cpp's extra buffer types (AMX tiles, repacked Q4 layouts).

    Those kernels are picked from the CPU's flags; on hosts that list an instruction set they
    cannot run (a VM advertising AMX) they crash the server (SIGSEGV/SIGILL).  llama.cpp's
    ``use_extra_bufts`` model parameter turns them off; llama-cpp-python has no argument for
    it, so the default parameters it starts from are patched."""
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params() -> Any:
        value = default()
        value.use_extra_bufts = False
        return value

    lib.llama_model_default_params = params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, extra = parser.parse_known_args(argv)
    with open(args.config_json, encoding="utf-8") as f:
        settings = json.load(f)
    overrides = llama_overrides(server_args_to_settings(extra))

    from .llamacpp_engine import LlamaCppEngine  # numpy, llama_cpp: the env's
    from .serving import serve

    if settings.get("extra_buffers") is False:
        disable_extra_buffers()
    print(f"owllm llamacpp_server: extra buffer types "
          f"{'off' if settings.get('extra_buffers') is False else 'on'}", flush=True)
    engine = LlamaCppEngine(settings)
    return serve(engine, lambda: engine.load(**overrides), args.host, args.port,
                 "owllm llamacpp_server", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    sys.exit(main())
