"""``owllm model smoke MODEL_ID``: start, health-check and generate; the guide's JSON.
``owllm model smoke --all`` smokes every model of the config, one after the other, and
prints ``{"status", "results": [...]}``; it exits 1 when any model fails."""

from __future__ import annotations

import argparse
from typing import Any

from owllm.cli._common import Context, emit, info
from owllm.errors import UsageError
from owllm.servers.manager import LLMServerManager
from owllm.servers.reaper import owned_servers
from owllm.smoke import model_smoke


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    smoke = subparsers.add_parser("smoke", parents=[parents],
                                  help="start the model's server, check health and generation")
    smoke.add_argument("model_id", metavar="MODEL_ID", nargs="?")
    smoke.add_argument("--all", action="store_true", dest="all_models",
                       help="smoke every model of the config, in config order")
    smoke.add_argument("--keep", action="store_true",
                       help="leave the server running afterwards")
    smoke.set_defaults(func=cmd_smoke)


def manager_for(ctx: Context) -> LLMServerManager:
    return LLMServerManager(ctx.config, home=ctx.home)


def cmd_smoke(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    if args.all_models == (args.model_id is not None):
        raise UsageError("give a MODEL_ID or --all (not both)",
                         hint=f"models in {ctx.config.path}: {', '.join(ctx.config.models)}")
    if not args.all_models:
        ctx.config.model(args.model_id)  # unknown id → exit 2 before anything starts
    manager = manager_for(ctx)
    # The command owns the servers it starts: a kill -9 mid-run has its watchdog stop them
    # (servers/reaper.py); --keep hands them over instead.
    with owned_servers(manager, kind="smoke", keep=args.keep):
        if not args.all_models:
            result = model_smoke(manager, args.model_id, keep=args.keep)
            emit(ctx, result.to_dict())
            return 0 if result.passed else 1
        results = []
        for model_id in ctx.config.models:
            info(f"owllm: smoke {model_id} ...")
            results.append(model_smoke(manager, model_id, keep=args.keep))
            failed_step = next((r["step"] for r in results[-1].ladder if r["ok"] is False),
                               None)
            info(f"owllm: smoke {model_id}: {results[-1].status}"
                 + (f" (readiness step {failed_step} failed)" if failed_step else ""))
    failed = [r.model_id for r in results if not r.passed]
    emit(ctx, {"status": "FAIL" if failed else "PASS", "failed": failed,
               "results": [r.to_dict() for r in results]})
    return 1 if failed else 0
