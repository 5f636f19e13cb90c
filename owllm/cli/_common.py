"""Helpers every CLI group shares: context from the global options, and output.

Output rule: a command's result (a dict or list of dicts) goes to stdout as JSON when
``--json`` is given or stdout is not a terminal; on a terminal it is shown as a table or
indented JSON.  Progress and human messages go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from owllm._yaml_lines import display
from owllm.config import Config, load_config
from owllm.errors import ConfigError, UsageError
from owllm.paths import Home, resolve_config_path, resolve_home
from owllm.state_store import StateStore


@dataclass
class Context:
    """What the global options (``--config``, ``--home``, ``--json``) resolve to, lazily.

    Nothing is read before a command asks for it: commands that only look at runtime state
    (``state``, ``server status|stop|logs``, ``env list``) use ``home`` and ``store`` and never
    touch the config, so they work from the home alone and a broken YAML cannot fail them.

    Nothing is created before the input is known good (issue 13): ``home`` (which creates
    ``.owllm/``) and ``store`` refuse to run while an explicit ``--config`` names no file,
    and a command that needs the config reads ``config`` before ``home``/``store``, so a
    typo or a broken YAML exits 2 leaving the folders as they were.
    """

    config_arg: str | None
    home_arg: str | None
    json: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        return cls(getattr(args, "config", None), getattr(args, "home", None),
                   bool(getattr(args, "json", False)))

    @cached_property
    def _home(self) -> Home:
        # Resolved without creating anything: looking for a config must not make folders.
        return resolve_home(self.home_arg, self.config_arg)

    @cached_property
    def config_path_or_none(self) -> Path | None:
        """``--config``, else the home's ``configs/llm_backends.yaml``, else the nearest one
        from the working directory up; None when there is none.  An explicit ``--config``
        that is not a file is a ConfigError (exit 2): the home derives from it."""
        if self.config_arg is not None:
            path = Path(self.config_arg)
            if not path.is_file():
                shown = display(path)
                problem = "file not found" if not path.exists() else "not a regular file"
                raise ConfigError(shown, [f"{shown}: {problem}"], hint="check the --config path")
        return resolve_config_path(self.config_arg, self._home)

    @cached_property
    def config_path(self) -> Path:
        path = self.config_path_or_none
        if path is None:
            raise UsageError(
                f"no configs/llm_backends.yaml found in the home ({self._home.root}) or from "
                "the working directory up", hint="pass --config PATH")
        return path

    @cached_property
    def config(self) -> Config:
        return load_config(self.config_path)

    @cached_property
    def home(self) -> Home:
        """The home, its folders created on first use: never for a --config that is not
        there (the typo's folder would become a home)."""
        if self.config_arg is not None:
            self.config_path_or_none  # noqa: B018  (raises before anything is created)
        return self._home.ensure()

    @cached_property
    def store(self) -> StateStore:
        return StateStore(self.home.state_db)


def emit(ctx: Context, data: Any, columns: Sequence[str] | None = None) -> None:
    """Print a result: JSON for machines, a table (when ``columns`` given) for people."""
    if ctx.json or not sys.stdout.isatty() or columns is None:
        print(json.dumps(data, indent=2, default=str))
        return
    rows = data if isinstance(data, list) else [data]
    print_table(rows, columns)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A rich table on stdout (only for a terminal: :func:`emit` prints JSON otherwise)."""
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    Console().print(table)


def info(message: str) -> None:
    """A human message on stderr (never mixed into JSON on stdout)."""
    print(message, file=sys.stderr)
