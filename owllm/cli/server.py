"""``owllm server start|stop|restart|status|logs``: manage model servers by hand.

``start`` and ``restart`` need the model's config entry.  ``status``, ``stop`` and ``logs`` act
on what the StateStore records, so they work from the home alone (``--home`` or
``$OWLLM_HOME``, from any working directory) and never read, or fail on, the YAML.
"""

from __future__ import annotations

import argparse
from types import MappingProxyType
from typing import Any

from owllm.cli._common import Context, emit
from owllm.cli.model import manager_for
from owllm.config import Config
from owllm.errors import UsageError
from owllm.paths import CONFIG_RELPATH, check_model_id
from owllm.servers.manager import LLMServerManager

COLUMNS = ["model_id", "status", "healthy", "pid", "port", "url", "env_key", "started_at"]


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    def leaf(name: str, handler: Any, help_text: str, optional_id: bool = False) -> Any:
        parser = subparsers.add_parser(name, parents=[parents], help=help_text)
        parser.add_argument("model_id", metavar="MODEL_ID", nargs="?" if optional_id else None)
        parser.set_defaults(func=handler)
        return parser

    leaf("start", cmd_start, "start a model's server (returns once it is ready)")
    leaf("stop", cmd_stop, "stop a model's server and its whole process tree")
    leaf("restart", cmd_restart, "stop, then start a model's server")
    leaf("status", cmd_status, "reconciled status of one server, or all (like `ollama ps`)",
         optional_id=True)
    logs = leaf("logs", cmd_logs, "the last lines of a model's server log")
    logs.add_argument("-n", "--lines", type=int, default=50)


def state_manager_for(ctx: Context) -> LLMServerManager:
    """A manager that knows no models, for commands that only act on StateStore rows.

    Stop, status and logs never look a model up in the config (the manager keys everything
    on the recorded row: pid and create time, process group, token, descendants), so an
    empty config is enough and the YAML is neither needed nor validated.  Stopping still goes
    through the manager's own stop path.
    """
    placeholder = Config(path=ctx.home.root / CONFIG_RELPATH, models=MappingProxyType({}))
    return LLMServerManager(placeholder, home=ctx.home)


def _public(row: dict[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    public = {k: v for k, v in row.items() if k not in ("pid_create_time", "kind")}
    extra = public.get("extra")
    if isinstance(extra, dict) and extra.get("headers"):
        # An attached endpoint's headers (backend remote) may carry a gateway's credential:
        # the row keeps them to send them; output shows their names only.
        public["extra"] = {**extra, "headers": sorted(extra["headers"])}
    return public


def _model_id(args: argparse.Namespace) -> str | None:
    """The MODEL_ID argument, checked before it names a lock or a log (``../../x`` is no
    id: exit 2, nothing created)."""
    if args.model_id is None:
        return None
    return check_model_id(args.model_id, f"owllm server {getattr(args, 'command', '')}".strip())


def cmd_start(args: argparse.Namespace, restart: bool = False) -> int:
    """``server start`` (and ``restart``): the model must be in the config."""
    _model_id(args)
    ctx = Context.from_args(args)
    ctx.config.model(args.model_id)
    manager = manager_for(ctx)
    start = manager.restart_server if restart else manager.start_server
    emit(ctx, _public(start(args.model_id)), COLUMNS)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    _model_id(args)
    ctx = Context.from_args(args)
    row = state_manager_for(ctx).stop_server(args.model_id)
    emit(ctx, _public(row) or {"model_id": args.model_id, "status": "NOT_STARTED"}, COLUMNS)
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    return cmd_start(args, restart=True)


def cmd_status(args: argparse.Namespace) -> int:
    _model_id(args)
    ctx = Context.from_args(args)
    rows = [_public(r) for r in state_manager_for(ctx).status(args.model_id)]
    emit(ctx, rows, COLUMNS)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    _model_id(args)
    ctx = Context.from_args(args)
    manager = state_manager_for(ctx)
    if (manager.store.get_server(args.model_id) is None
            and not (ctx.home.logs_dir / f"{args.model_id}.log").is_file()):
        known = ", ".join(r["model_id"] for r in manager.store.list_servers(kind="model"))
        raise UsageError(f"no server recorded for model {args.model_id!r} in {ctx.home.root}",
                         hint=f"servers in this home: {known or '(none)'}")
    print(manager.logs(args.model_id, args.lines))
    return 0
