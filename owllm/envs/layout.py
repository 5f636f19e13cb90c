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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

from owllm.envs.installer import venv_python
from owllm.paths import Home

BUILD_MARKER = "build.json"
ENV_MARKER = "env.json"


def store_dir(home: Home) -> Path:
    return home.envs_dir / ".store"


def link_path(home: Home, key: str) -> Path:
    return home.envs_dir / key


def python_for(env_root: Path) -> Path:
    """The env's interpreter under a published (or build) dir."""
    return venv_python(env_root / ".venv")


def current_target(home: Home, key: str) -> Path | None:
    """The build dir ``.envs/<key>`` points at, or None."""
    link = link_path(home, key)
    if not link.is_symlink():
        return None
    target = (link.parent / os.readlink(link)).resolve()
    return target if target.is_dir() else None


def new_build_dir(home: Home, key: str) -> Path:
    """A fresh build dir with a marker naming this process as its builder."""
    root = store_dir(home) / f"{key}-{uuid.uuid4().hex[:12]}"
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
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if key is not None and not _belongs(entry.name, key):
                continue
            if entry.resolve() in live or (not locked and builder_alive(entry)):
                continue
            if not locked and not (entry / BUILD_MARKER).exists() and _age(entry) < 60:
                continue  # just created; its builder is about to write the marker
            found.append(entry)
    if home.envs_tmp_dir.is_dir():
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
    return sorted(p.name for p in home.envs_dir.iterdir() if not p.name.startswith("."))


def published_keys(home: Home) -> list[str]:
    """Keys with a ``.envs/<key>`` entry."""
    return _published_keys(home)


def remove_path(path: Path) -> None:
    """Remove a file, link or directory tree; missing is fine."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
