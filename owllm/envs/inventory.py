"""What a home holds and what may go: the policy behind ``owllm env list`` and ``env gc``.

The CLI only formats these results, so a script (or a test) gets the same answer from the
library as a user gets from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from owllm.envs import layout
from owllm.envs.legacy import list_legacy
from owllm.envs.registry import EnvRegistry


def list_envs(registry: EnvRegistry) -> list[dict[str, Any]]:
    """Every env of the home: StateStore rows (READY/BUILDING/FAILED), published envs with no
    row (``UNTRACKED``: a StateStore deleted or replaced under them) and the guide's legacy
    per-model envs (:func:`owllm.envs.legacy.list_legacy`)."""
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
    return rows + list_legacy(registry)


@dataclass(frozen=True)
class Collected:
    """What :func:`collect_garbage` deleted (or, dry, would delete): one item per path."""

    dry_run: bool
    items: list[dict[str, Any]] = field(default_factory=list)
    # False when no model config was found: then only stale builds were considered, since
    # "unused" has no meaning without the models that use envs.
    used_known: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run,
                "would_remove" if self.dry_run else "removed": self.items}


def collect_garbage(registry: EnvRegistry, *, dry_run: bool = False) -> Collected:
    """Stale builds, then every published env no configured model uses.  Each item is one
    path that is (or, with ``dry_run``, would be) deleted: a link is unlinked, never
    followed; a directory is a real one under the home."""
    stale = [layout.Removal(p, layout.kind_of(p), "stale build (builder gone)")
             for p in layout.stale_builds(registry.home)]
    unused: list[str] = []
    if registry.config is not None:
        used = set(registry.resolutions())
        unused = [key for key in layout.published_keys(registry.home) if key not in used]
    items = [item.to_dict() for item in stale]
    for item in stale:
        if not dry_run:
            layout.remove_path(item.path)
    listed = {str(item.path) for item in stale}
    for key in unused:
        # The same plan either way: the dry run lists what the real run deletes.
        removed = registry.remove(key, dry_run=dry_run)
        items += [{"env_key": key, **item.to_dict(),
                   "reason": f"no configured model uses it: {item.reason}"}
                  for item in removed.items if str(item.path) not in listed]
    return Collected(dry_run, items, used_known=registry.config is not None)
