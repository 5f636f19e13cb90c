"""``owllm`` command line: parse arguments, call the library, print JSON or a table.

Exit codes: 0 pass, 1 a check ran and failed, 2 usage or configuration error.
Each command group lives in its own module with a ``register(subparsers)`` function; every
leaf command sets ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import signal
import sys
import threading
from collections.abc import Sequence
from importlib import import_module
from typing import Any

from owllm import __version__
from owllm.errors import OwllmError

# (group name, module, help) — a group module registers its subcommands on the group parser.
GROUPS: tuple[tuple[str, str, str], ...] = (
    ("env", "owllm.cli.env", "shared Python environments (test, list, create, remove, gc, …)"),
    ("model", "owllm.cli.model", "model checks (smoke)"),
    ("server", "owllm.cli.server", "model servers (start, stop, status, logs)"),
    ("tools", "owllm.cli.tools", "tool calling (validate, serve, stop, status, smoke)"),
)
# Single commands without a group.
# Extra modules that add subcommands to a group: (group, module).
GROUP_EXTRAS: tuple[tuple[str, str], ...] = (
    ("tools", "owllm.cli.tools_server"),
)
COMMANDS: tuple[tuple[str, str], ...] = (
    ("owllm.cli.state", "register"),
    ("owllm.cli.init", "register"),
)


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
    for name, module_name, help_text in GROUPS:
        group = sub.add_parser(name, help=help_text, parents=[common])
        group_sub = group.add_subparsers(dest="command", metavar="SUBCOMMAND")
        group_sub.required = True
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a group not built yet in this checkout
        _register(module.register, group_sub, common)
        for extra_group, extra_module in GROUP_EXTRAS:
            if extra_group == name:
                _register(import_module(extra_module).register, group_sub, common)
    for module_name, attr in COMMANDS:
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        _register(getattr(module, attr), sub, common)
    return parser


def _register(register: Any, subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Call a group's ``register(subparsers[, common])``; ``common`` holds the global options
    so they are accepted after the subcommand too (``owllm env test KEY --json``)."""
    if len(inspect.signature(register).parameters) >= 2:
        register(subparsers, common)
    else:
        register(subparsers)


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
