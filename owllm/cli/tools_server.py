"""``owllm tools serve|stop|status|smoke``: the managed tool server and the tools smoke."""

from __future__ import annotations

import argparse
from typing import Any

from owllm.cli._common import Context, emit
from owllm.cli.model import manager_for

COLUMNS = ["model_id", "status", "healthy", "pid", "port", "url", "started_at"]


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    serve = subparsers.add_parser("serve", parents=[parents],
                                  help="start the tool server in the background (returns once "
                                       "healthy)")
    serve.add_argument("--host", default=None, help="default 127.0.0.1 (or the config's)")
    serve.add_argument("--port", type=int, default=None,
                       help="default 8763 (or the config's); 0 picks a free port")
    serve.set_defaults(func=cmd_serve)
    subparsers.add_parser("stop", parents=[parents], help="stop the tool server"
                          ).set_defaults(func=cmd_stop)
    subparsers.add_parser("status", parents=[parents], help="the tool server's status"
                          ).set_defaults(func=cmd_status)
    smoke = subparsers.add_parser("smoke", parents=[parents],
                                  help="the whole tool round trip with a model")
    smoke.add_argument("model_id", metavar="MODEL_ID")
    smoke.add_argument("--keep", action="store_true",
                       help="leave the model and tool servers running afterwards")
    smoke.set_defaults(func=cmd_smoke)


def _config(ctx: Context) -> Any:
    return ctx.config if ctx.config_path_or_none is not None else None


def cmd_serve(args: argparse.Namespace) -> int:
    from owllm.servers.tool_server import start_tool_server

    ctx = Context.from_args(args)
    config = _config(ctx)  # first: a broken config must not create the home
    row = start_tool_server(ctx.home, config=config, host=args.host, port=args.port)
    emit(ctx, {"url": row["url"], "pid": row["pid"], "port": row["port"],
               "reused": row.get("reused", False)})
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from owllm.servers.tool_server import stop_tool_server

    ctx = Context.from_args(args)
    row = stop_tool_server(ctx.home)
    emit(ctx, {"status": row["status"] if row else "NOT_STARTED",
               "pid": row["pid"] if row else None})
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from owllm.servers.tool_server import tool_server_status

    ctx = Context.from_args(args)
    row = tool_server_status(ctx.home) or {"model_id": "tool-server", "status": "NOT_STARTED"}
    emit(ctx, {k: v for k, v in row.items() if k != "pid_create_time"}, COLUMNS)
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    from owllm.smoke import tools_smoke

    ctx = Context.from_args(args)
    ctx.config.model(args.model_id)
    result = tools_smoke(manager_for(ctx), args.model_id, keep=args.keep)
    emit(ctx, result.to_dict())
    return 0 if result.passed else 1
