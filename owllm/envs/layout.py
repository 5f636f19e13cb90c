"""On-disk layout of shared envs and the atomic publish step.

::

    .envs/<key>                     symlink → .store/<key>-<uuid>   (the published env)
    .envs/.store/<key>-<uuid>/      one build: .venv/, build.json (builder pid), env.json
    .envs/.tmp/<key>-<uuid>.link    a symlink being staged for the swap

A venv embeds its absolute path (console-script shebangs, ``pyvenv.cfg``), so it is built at
the path it keeps forever, ``.store/<key>-<uuid>/.venv``, and never moved.  Publishing is one
``rename(2)`` of a staged symlink over ``.envs/<key>``: atomic on POSIX, so at every instant
``.envs/<key>`` is either the previous complete env or the new complete env — a kill -9 at
any point cannot expose a half-built one.  Build dirs that no link points at and whose
builder pid is dead are stale and removed by the next call (or ``owllm env gc``).

Deleting is confined (issue 13): a key is checked against its pattern before it names a
path (:func:`owllm.paths.check_env_key`, so ``..`` or ``../configs`` never reach here); a
link is unlinked, never followed, and its target is deleted only when it is a real build
directory of that key directly under a real ``.envs/.store`` (a link planted in ``.envs/``
that points elsewhere loses only the link).  :func:`removal_plan` lists exactly what goes,
for ``--dry-run`` and the real removal alike.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from owllm.envs.installer import venv_python
from owllm.paths import ENV_KEY_PATTERN, Home, check_env_key

BUILD_MARKER = "build.json"
ENV_MARKER = "env.json"


def store_dir(home: Home) -> Path:
    return home.envs_dir / ".store"


def link_path(home: Home, key: str) -> Path:
    """``.envs/<key>``; the key is checked first (InvalidName otherwise)."""
    return home.envs_dir / check_env_key(key)


def _real_dir(folder: Path) -> bool:
    """A directory that is not itself a link (``.envs`` may be one: another disk)."""
    return folder.is_dir() and not folder.is_symlink()


def python_for(env_root: Path) -> Path:
    """The env's interpreter under a published (or build) dir."""
    return venv_python(env_root / ".venv")


def current_target(home: Home, key: str) -> Path | None:
    """The build dir ``.envs/<key>`` points at, or None: only a real directory of this key
    directly under a real ``.envs/.store``, whatever else a link may name."""
    link = link_path(home, key)
    if not link.is_symlink() or not _real_dir(store_dir(home)):
        return None
    try:
        target = (link.parent / os.readlink(link)).resolve()
    except (OSError, RuntimeError):  # a dangling or looping link
        return None
    if (target.parent != store_dir(home).resolve() or not _belongs(target.name, key)
            or not target.is_dir()):
        return None
    return target


def new_build_dir(home: Home, key: str) -> Path:
    """A fresh build dir with a marker naming this process as its builder."""
    root = store_dir(home) / f"{check_env_key(key)}-{uuid.uuid4().hex[:12]}"
    root.mkdir(parents=True)
    me = psutil.Process()
    write_json_atomic(root / BUILD_MARKER, {"key": key, "pid": me.pid,
                                            "create_time": me.create_time(),
                                            "started": time.time()})
    return root


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file + fsync + rename: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def publish(home: Home, key: str, build_root: Path) -> Path | None:
    """Point ``.envs/<key>`` at ``build_root`` atomically; return the previous target."""
    previous = current_target(home, key)
    link = link_path(home, key)
    if link.exists() and not link.is_symlink():
        # A directory left by an older layout or by hand: move it aside first.
        aside = store_dir(home) / f"{key}-replaced-{uuid.uuid4().hex[:8]}"
        os.replace(link, aside)
        previous = aside
    home.envs_tmp_dir.mkdir(parents=True, exist_ok=True)
    staged = home.envs_tmp_dir / f"{key}-{uuid.uuid4().hex[:12]}.link"
    os.symlink(os.path.relpath(build_root, link.parent), staged, target_is_directory=True)
    os.replace(staged, link)
    _fsync_dir(link.parent)
    return previous


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def builder_alive(root: Path) -> bool:
    """True while the process named in a build dir's marker is still running."""
    marker = read_json(root / BUILD_MARKER)
    if marker is None:
        return False
    try:
        proc = psutil.Process(int(marker["pid"]))
        return abs(proc.create_time() - float(marker["create_time"])) < 1.0
    except (psutil.Error, KeyError, ValueError, TypeError):
        return False


def stale_builds(home: Home, key: str | None = None, *, locked: bool = False) -> list[Path]:
    """Build dirs no ``.envs/<key>`` link points at whose builder is dead (or that never
    had one), plus leftover staged links; for one key or all.

    ``locked``: the caller holds ``key``'s lock, so no build of it is in progress and every
    dir the link does not point at (superseded envs too) is stale."""
    root = store_dir(home)
    live = {t for k in _published_keys(home) if (t := current_target(home, k)) is not None}
    found: list[Path] = []
    # A .store or .tmp that is a link is not walked: its entries are not ours to delete.
    if _real_dir(root):
        for entry in sorted(root.iterdir()):
            if key is not None and not _belongs(entry.name, key):
                continue
            if entry.resolve() in live or (not locked and builder_alive(entry)):
                continue
            if not locked and not (entry / BUILD_MARKER).exists() and _age(entry) < 60:
                continue  # just created; its builder is about to write the marker
            found.append(entry)
    if _real_dir(home.envs_tmp_dir):
        for entry in sorted(home.envs_tmp_dir.iterdir()):
            if key is None or _belongs(entry.name.removesuffix(".link"), key):
                found.append(entry)
    return found


def _belongs(name: str, key: str) -> bool:
    return re.fullmatch(re.escape(key) + r"-(replaced-)?[0-9a-f]{8,12}", name) is not None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _published_keys(home: Home) -> list[str]:
    if not home.envs_dir.is_dir():
        return []
    # Only names that are env keys: anything else in .envs/ was not made by OWLLM.
    return sorted(p.name for p in home.envs_dir.iterdir()
                  if re.fullmatch(ENV_KEY_PATTERN.strip("^$"), p.name))


def published_keys(home: Home) -> list[str]:
    """Keys with a ``.envs/<key>`` entry."""
    return _published_keys(home)


@dataclass(frozen=True)
class Removal:
    """One thing a removal deletes.  ``kind``: ``link`` (the link alone is unlinked; its
    target stays unless listed too), ``directory`` (a real directory under the home, deleted
    with its contents) or ``file``."""

    path: Path
    kind: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "kind": self.kind, "reason": self.reason}


def kind_of(path: Path) -> str:
    """``link``, ``directory`` or ``file``: what :func:`remove_path` would delete."""
    if path.is_symlink():
        return "link"
    return "directory" if path.is_dir() else "file"


def removal_plan(home: Home, key: str, *, locked: bool = True) -> list[Removal]:
    """What removing env ``key`` deletes: its ``.envs/<key>`` entry, the build that link
    points at (only a real build dir of the key in the store) and the key's stale builds.
    ``locked`` as in :func:`stale_builds`."""
    link = link_path(home, key)
    plan: list[Removal] = []
    if link.is_symlink():
        target = current_target(home, key)
        if target is None:
            try:
                points_at = os.readlink(link)
            except OSError:  # removed meanwhile
                points_at = "?"
            plan.append(Removal(link, "link", f"unpublish; its target {points_at} is not a "
                                              "build of this key in .envs/.store: kept"))
        else:
            plan.append(Removal(link, "link", "unpublish"))
            plan.append(Removal(target, "directory", "the published build"))
    elif link.exists():
        plan.append(Removal(link, kind_of(link), "env folder of an older layout"))
    listed = {item.path for item in plan}
    plan += [Removal(p, kind_of(p), "stale build") for p in stale_builds(home, key, locked=locked)
             if p not in listed]
    return plan


def remove_path(path: Path) -> None:
    """Remove a file or link (the link itself: never what it points at) or a real directory
    tree (``rmtree`` does not follow links inside it either); missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
