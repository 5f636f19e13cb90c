"""``owllm`` command line: parse arguments, call the library, print JSON or a table.

Exit codes: 0 pass, 1 a check ran and failed, 2 usage or configuration error.
Each command group lives in its own module with a ``register(subparsers, common)`` function,
listed once in :data:`REGISTRATIONS`; every leaf command sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from owllm import __version__
from owllm.errors import OwllmError

# The one registration list: (group, module).  A module's ``register(subparsers, common)``
# adds its commands to the group's subparsers, or to the top level when the group is None;
# several modules may fill one group (``tools``: validating apart from serving).
REGISTRATIONS: tuple[tuple[str | None, str], ...] = (
    ("env", "owllm.cli.env"),
    ("model", "owllm.cli.model"),
    ("server", "owllm.cli.server"),
    ("tools", "owllm.cli.tools"),
    ("tools", "owllm.cli.tools_server"),
    (None, "owllm.cli.state"),
    (None, "owllm.cli.init"),
)
GROUP_HELP = {
    "env": "shared Python environments (test, list, create, remove, gc, …)",
    "model": "model checks (smoke)",
    "server": "model servers (start, stop, status, logs)",
    "tools": "tool calling (validate, serve, stop, status, smoke)",
}


def _global_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="model config (default: the home's configs/llm_backends.yaml, "
                             "else the nearest one from the working directory up)")
    parent.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="OWLLM home (default: $OWLLM_HOME, else the config's folder)")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON on stdout even on a terminal")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """argparse exits 2 on usage errors, which is our code for them too."""
    common = _global_options()
    parser = argparse.ArgumentParser(
        prog="owllm", description="OWLLM: reliability layer for self-hosted LLMs",
        parents=[common])
    parser.add_argument("--version", action="version", version=f"owllm {__version__}")
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    groups: dict[str, Any] = {}
    for group, module_name in REGISTRATIONS:
        target = sub
        if group is not None:
            if group not in groups:
                group_parser = sub.add_parser(group, help=GROUP_HELP[group], parents=[common])
                groups[group] = group_parser.add_subparsers(dest="command",
                                                            metavar="SUBCOMMAND")
                groups[group].required = True
            target = groups[group]
        # ``common`` holds the global options, so they are accepted after the subcommand
        # too (``owllm env test KEY --json``).
        import_module(module_name).register(target, common)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally``/``except BaseException`` runs:
    a start cut short by SIGTERM (a CI runner, ``kill``) kills what it launched, as on
    Ctrl-C, instead of dying on Python's default action and leaving the server orphaned."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; SIGTERM is handled like Ctrl-C for its duration (and the previous
    handler restored: ``main`` is also called in-process, by tests and embedding code)."""
    if threading.current_thread() is not threading.main_thread():
        return _run(argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _run(argv)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("config", "home"):
        setattr(args, name, getattr(args, name, None))
    args.json = getattr(args, "json", False)
    try:
        return int(args.func(args))
    except OwllmError as exc:
        if args.json or not sys.stdout.isatty():
            payload = {"error": {"type": type(exc).__name__, "message": exc.message,
                                 "hint": exc.hint}}
            print(json.dumps(payload, indent=2))
        print(f"owllm: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("owllm: terminated (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print("owllm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
