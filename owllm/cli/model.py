"""``owllm model smoke MODEL_ID``: start, health-check and generate; the guide's JSON."""

from __future__ import annotations

import argparse
from typing import Any

from owllm.cli._common import Context, emit
from owllm.servers.manager import LLMServerManager
from owllm.smoke import model_smoke


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    smoke = subparsers.add_parser("smoke", parents=[parents],
                                  help="start the model's server, check health and generation")
    smoke.add_argument("model_id", metavar="MODEL_ID")
    smoke.add_argument("--keep", action="store_true",
                       help="leave the server running afterwards")
    smoke.set_defaults(func=cmd_smoke)


def manager_for(ctx: Context) -> LLMServerManager:
    return LLMServerManager(ctx.config, home=ctx.home)


def cmd_smoke(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    ctx.config.model(args.model_id)  # unknown id → exit 2 before anything starts
    result = model_smoke(manager_for(ctx), args.model_id, keep=args.keep)
    emit(ctx, result)
    return 0 if result["status"] == "PASS" else 1
