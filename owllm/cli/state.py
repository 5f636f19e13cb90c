"""``owllm models`` and ``owllm state``: what is configured and what the StateStore knows."""

from __future__ import annotations

import argparse
from typing import Any

from owllm.cli._common import Context, emit
from owllm.servers.ports import LIVE_STATUSES
from owllm.servers.reaper import describe_owner


def register(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    models = sub.add_parser("models", parents=[common],
                            help="configured models, with their registration in the StateStore")
    models.set_defaults(func=cmd_models)
    state = sub.add_parser("state", parents=[common],
                           help="envs, servers and recent events from the StateStore")
    state.add_argument("--events", type=int, default=20, metavar="N",
                       help="how many recent events to show (default 20)")
    state.set_defaults(func=cmd_state)


def cmd_models(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    config = ctx.config  # first: a broken config must not create the home's store
    registered = {row["model_id"]: row for row in ctx.store.list_models()}
    rows = []
    for model_id, model in config.models.items():
        row = registered.pop(model_id, None)
        rows.append({
            "model_id": model_id,
            "backend": model.backend,
            "base_model": model.base_model,
            "model_type": model.model_type,
            "configured": True,
            "registered": row is not None,
            "env_key": row["env_key"] if row else None,
        })
    for model_id, row in registered.items():  # registered once, since removed from the YAML
        rows.append({"model_id": model_id, "backend": row["backend"],
                     "base_model": row["model_path"], "model_type": None,
                     "configured": False, "registered": True, "env_key": row["env_key"]})
    emit(ctx, rows, ["model_id", "backend", "base_model", "configured", "registered", "env_key"])
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    ctx = Context.from_args(args)
    store = ctx.store
    data = {
        "home": str(ctx.home.root),
        "state_db": str(store.db_path),
        "schema_version": store.schema_version,
        "models": store.list_models(),
        "envs": store.list_envs(),
        "servers": _with_owners(store),
        "events": store.list_events(limit=args.events),
    }
    emit(ctx, data)
    return 0


def _with_owners(store: Any) -> list[dict[str, Any]]:
    """Server rows, each live one with the run or command that owns it (``owner``: its
    run_id, kind pytest/smoke/api, pid, whether that process lives, ``kept`` when handed
    over); null for a server nobody owns (``owllm server start``) or one that is not live."""
    owners = {(row["server_kind"], row["model_id"]): row for row in store.list_server_owners()}
    return [row | {"owner": describe_owner(owners.get((row["kind"], row["model_id"])))
                   if row["status"] in LIVE_STATUSES else None}
            for row in store.list_servers()]
