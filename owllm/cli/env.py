"""``owllm env …``: test, list, create, remove, gc, resolve, migrate shared environments."""

from __future__ import annotations

import argparse
from typing import Any

from owllm.cli._common import Context, emit, info
from owllm.envs.inventory import collect_garbage, list_envs
from owllm.envs.legacy import migrate
from owllm.envs.registry import EnvRegistry
from owllm.envs.spec import find_envs_config, load_envs_config
from owllm.paths import check_env_key, check_model_id
from owllm.smoke import env_test


def _registry(args: argparse.Namespace, *, configs: bool = True) -> tuple[Context, EnvRegistry]:
    """The context and the home's registry.  ``configs``: the command reads the model config
    and envs.yaml, so both are validated first, before the registry creates anything in the
    home (a broken YAML leaves no ``.owllm/`` behind).  `env list` and `env remove` work from
    the home alone, whatever state the YAML is in."""
    ctx = Context.from_args(args)
    config_path = ctx.config_path_or_none
    if configs:
        if config_path is not None:
            ctx.config  # noqa: B018  (loaded for its ConfigError)
        load_envs_config(find_envs_config(config_path))
    # Progress goes to stderr, so it stays on with --json (stdout holds only the JSON).
    registry = EnvRegistry(home=ctx.home, config_path=config_path)
    return ctx, registry


def cmd_test(args: argparse.Namespace) -> int:
    check_env_key(args.key, "owllm env test")
    ctx, registry = _registry(args)
    result = env_test(registry, args.key)
    emit(ctx, result.to_dict())
    return 0 if result.passed else 1


def cmd_list(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args, configs=False)
    emit(ctx, list_envs(registry),
         columns=["env_key", "model_id", "status", "torch_version", "path"])
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    check_env_key(args.key, "owllm env create")
    ctx, registry = _registry(args)
    env = registry.ensure_env(args.key, from_constraints=args.from_constraints,
                              force=args.force)
    emit(ctx, {"env_key": env.key, "status": "READY", "path": str(env.path),
               "python_path": str(env.python_executable), "torch_version": env.torch_version,
               "cuda_available": env.cuda_available,
               "constraints": str(registry.constraints_path(env.key))})
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    check_env_key(args.key, "owllm env remove")  # "..", "../configs": nothing is touched
    ctx, registry = _registry(args, configs=False)
    emit(ctx, registry.remove(args.key, dry_run=args.dry_run).to_dict())
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    collected = collect_garbage(registry, dry_run=args.dry_run)
    if not collected.used_known:
        info("owllm: no model config found: only stale builds are collected")
    emit(ctx, collected.to_dict())
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    ctx, registry = _registry(args)
    emit(ctx, {**registry.resolve(args.model_id).to_dict(),
               "hardware": registry.profile.to_dict(),
               "envs_yaml": str(registry.envs_config.path)})
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.model_id is not None:
        check_model_id(args.model_id, "owllm env migrate")
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
    remove = leaf("remove", cmd_remove, "delete an env: its link, its build, stale builds")
    remove.add_argument("key", metavar="KEY")
    remove.add_argument("--dry-run", action="store_true", help="only list what would go")
    leaf("gc", cmd_gc, "remove stale builds and envs no configured model uses") \
        .add_argument("--dry-run", action="store_true", help="only list what would go")
    leaf("resolve", cmd_resolve, "which env_key a model gets, and why") \
        .add_argument("model_id", metavar="MODEL_ID")
    leaf("migrate", cmd_migrate, "replace legacy per-model envs by verified shared envs") \
        .add_argument("model_id", metavar="MODEL_ID", nargs="?")
