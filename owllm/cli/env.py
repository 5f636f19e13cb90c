"""``owllm env …``: test, list, create, remove, gc, resolve, migrate shared environments."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from owllm.cli._common import Context, emit, info
from owllm.envs import layout
from owllm.envs.legacy import list_legacy, migrate
from owllm.envs.registry import EnvRegistry
from owllm.smoke import env_test


def _registry(args: argparse.Namespace) -> tuple[Context, EnvRegistry]:
    ctx = Context.from_args(args)
    # The registry reads the config only when a command needs models (resolve, gc, test of
    # a model's key): `env list` works from the home alone, whatever state the YAML is in.
    # Progress goes to stderr, so it stays on with --json (stdout holds only the JSON).
    registry = EnvRegistry(home=ctx.home, config_path=ctx.config_path_or_none)
    return ctx, registry


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "packages"}


def cmd_test(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    result = env_test(registry, args.key)
    emit(ctx, result)
    return 0 if result["status"] == "PASS" else 1


def cmd_list(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    rows: list[dict[str, Any]] = []
    for row in registry.store.list_envs():
        rows.append({"env_key": row["env_key"], "status": row["status"],
                     "torch_version": row.get("torch_version"), "path": row.get("path"),
                     "python_path": row.get("python_path"), "last_error": row.get("last_error"),
                     "updated_at": row.get("updated_at")})
    known = {r["env_key"] for r in rows}
    for key in layout.published_keys(registry.home):
        if key not in known:
            rows.append({"env_key": key, "status": "UNTRACKED",
                         "path": str(layout.link_path(registry.home, key))})
    rows += list_legacy(registry)
    emit(ctx, rows, columns=["env_key", "model_id", "status", "torch_version", "path"])
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    env = registry.ensure_env(args.key, from_constraints=args.from_constraints,
                              force=args.force)
    emit(ctx, {"env_key": env.key, "status": "READY", "path": str(env.path),
               "python_path": str(env.python_executable), "torch_version": env.torch_version,
               "cuda_available": env.cuda_available,
               "constraints": str(registry.constraints_path(env.key))})
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    removed = registry.remove(args.key)
    emit(ctx, {"env_key": args.key, "removed": removed})
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    items: list[dict[str, Any]] = [{"path": str(p), "reason": "stale build (builder gone)"}
                                   for p in layout.stale_builds(registry.home)]
    unused: list[str] = []
    if registry.config is not None:
        used = set(registry.resolutions())
        for key in layout.published_keys(registry.home):
            if key not in used:
                unused.append(key)
                items.append({"env_key": key, "path": str(layout.link_path(registry.home, key)),
                              "reason": "no configured model uses it"})
    else:
        info("owllm: no model config found: only stale builds are collected")
    if not args.dry_run:
        for item in items:
            if "env_key" in item:
                registry.remove(item["env_key"])
            else:
                layout.remove_path(Path(item["path"]))
    emit(ctx, {"dry_run": args.dry_run, "removed" if not args.dry_run else "would_remove": items})
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    emit(ctx, {**registry.resolve(args.model_id).to_dict(),
               "hardware": registry.profile.to_dict(),
               "envs_yaml": str(registry.envs_config.path)})
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    results = migrate(registry, args.model_id)
    emit(ctx, results, columns=["model_id", "env_key", "removed", "verified_by", "reason"])
    return 0 if all(r["removed"] for r in results) else 1


def register(subparsers: Any, parents: argparse.ArgumentParser) -> None:
    """Add the ``env`` subcommands."""
    def leaf(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(name, parents=[parents],
                                                                help=help_text)
        parser.set_defaults(func=handler)
        return parser

    leaf("test", cmd_test, "probe an env (built first if missing); exit 0 PASS, 1 FAIL") \
        .add_argument("key", metavar="KEY")
    leaf("list", cmd_list, "built envs (READY/FAILED) and legacy per-model envs")
    create = leaf("create", cmd_create, "build an env (no-op when READY)")
    create.add_argument("key", metavar="KEY")
    create.add_argument("--from-constraints", action="store_true",
                        help="reinstall exactly constraints/KEY.txt")
    create.add_argument("--force", action="store_true", help="rebuild even when READY")
    leaf("remove", cmd_remove, "delete an env").add_argument("key", metavar="KEY")
    leaf("gc", cmd_gc, "remove stale builds and envs no configured model uses") \
        .add_argument("--dry-run", action="store_true", help="only list what would go")
    leaf("resolve", cmd_resolve, "which env_key a model gets, and why") \
        .add_argument("model_id", metavar="MODEL_ID")
    leaf("migrate", cmd_migrate, "replace legacy per-model envs by verified shared envs") \
        .add_argument("model_id", metavar="MODEL_ID", nargs="?")
