"""Where OWLLM keeps its runtime files: one *home* folder laid out like the guide's ``LLM/``.

::

    <home>/
      configs/llm_backends.yaml   the user's models (usually, not required)
      .envs/<env_key>/            shared environments; .envs/.tmp/ holds builds in progress
      constraints/<env_key>.txt   exact pins of each built env (meant to be committed)
      environments/<model_id>/    legacy per-model envs (detected, never used)
      .owllm/state.db             the StateStore
      .owllm/logs/                one log per server
      .owllm/locks/               file locks
      .owllm/cache/               materialized demo models, converted weights

The home is resolved once, in this order: an explicit ``home`` argument (``--home``, the
pytest ini key), ``$OWLLM_HOME``, the folder holding the config's ``configs/`` folder, the
nearest ``configs/llm_backends.yaml`` from the working directory up, else the user's data
folder (``$XDG_DATA_HOME/owllm`` or ``~/.local/share/owllm``).

The config, when none is given, is the home's own ``configs/llm_backends.yaml`` if it has
one, else the nearest one from the working directory up (:func:`resolve_config_path`).

A :class:`Home` is path-like (``os.fspath(home)``, ``Path(home)``, ``str(home)`` and f-strings
give the root folder; ``home / "x"`` is ``home.root / "x"``): a Home handed on where a path is
expected must never become a folder named ``Home(root=PosixPath(...))``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from owllm.errors import UsageError

CONFIG_RELPATH = Path("configs") / "llm_backends.yaml"
ENV_HOME = "OWLLM_HOME"

# Names that become file names under the home.  Neither can hold a path separator or start
# with a dot, so ``..``, ``../x`` and ``.store`` are never names; the JSON Schemas of
# llm_backends.yaml and envs.yaml carry the same patterns (a test pins them).
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENV_KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_MODEL_ID_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 64"
_ENV_KEY_RULE = "letters, digits, '_', '.', '-', starting with a letter or digit, at most 100"


class InvalidName(UsageError):
    """A model id or env key that does not match its pattern (exit 2).  Raised before the
    name is joined to any path, so a name like ``../../x`` never reaches the file system."""

    def __init__(self, kind: str, value: object, rule: str, where: str | None = None) -> None:
        self.kind = kind
        self.value = value
        self.where = where
        shown = repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"
        super().__init__(f"{where + ': ' if where else ''}invalid {kind} {shown}",
                         hint=f"a {kind} is {rule} characters")


def _check(kind: str, pattern: str, rule: str, value: object, where: str | None) -> str:
    # fullmatch, not the schema's re.search: "$" there also matches before a final newline.
    if not isinstance(value, str) or re.fullmatch(pattern.strip("^$"), value) is None:
        raise InvalidName(kind, value, rule, where)
    return value


def check_model_id(value: object, where: str | None = None) -> str:
    """``value`` if it is a model id (:data:`MODEL_ID_PATTERN`), else :class:`InvalidName`.
    Every model id taken from the command line, a file or HTTP goes through this before it
    names a lock, a log or a folder; ``where`` says where it came from."""
    return _check("model id", MODEL_ID_PATTERN, _MODEL_ID_RULE, value, where)


def check_env_key(value: object, where: str | None = None) -> str:
    """``value`` if it is an env key (:data:`ENV_KEY_PATTERN`), else :class:`InvalidName`;
    the env-key counterpart of :func:`check_model_id`."""
    return _check("env key", ENV_KEY_PATTERN, _ENV_KEY_RULE, value, where)


@dataclass(frozen=True)
class Home:
    """The resolved home folder and every path derived from it.

    It is an ``os.PathLike`` standing for ``root``, so passing a Home where a path is expected
    (``subprocess`` argv, ``open``, ``Path(...)``, ``str(...)``) means the root folder.
    """

    root: Path

    def __post_init__(self) -> None:
        # Home(Home(...)) or Home("dir") must still derive Paths (not a nested Home's repr).
        object.__setattr__(self, "root", Path(os.fspath(self.root)))

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)

    def __truediv__(self, other: str | os.PathLike[str]) -> Path:
        return self.root / other

    @property
    def envs_dir(self) -> Path:
        return self.root / ".envs"

    @property
    def envs_tmp_dir(self) -> Path:
        return self.envs_dir / ".tmp"

    @property
    def constraints_dir(self) -> Path:
        return self.root / "constraints"

    @property
    def legacy_envs_dir(self) -> Path:
        return self.root / "environments"

    @property
    def state_dir(self) -> Path:
        return self.root / ".owllm"

    @property
    def state_db(self) -> Path:
        return self.state_dir / "state.db"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def locks_dir(self) -> Path:
        return self.state_dir / "locks"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    def ensure(self) -> Home:
        """Create the folders that must exist before anything is written; return self.

        ``.owllm/`` and its folders are private (0700, see :func:`private_dir`): state.db
        holds system prompts, errors and server tokens.  A folder that cannot be made
        because the home is read-only is left out: commands that only read need none of
        them, and a command that writes gets the store's "read-only" error instead."""
        for folder in (self.state_dir, self.logs_dir, self.locks_dir):
            try:
                private_dir(folder)
            except OSError as exc:
                if exc.errno not in READ_ONLY_ERRNOS:
                    raise
        return self


# Modes of everything OWLLM itself creates under ``<home>/.owllm/``: only the user reads it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# What "this folder cannot be written" looks like to mkdir/open.
READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def private_dir(folder: Path) -> Path:
    """Make ``folder`` (0700) if missing, and tighten it to 0700 if it is looser.

    Tightening is best effort: a home made by an older OWLLM (0755) is fixed on its next
    use, while a read-only home, or a folder of another user, stays as it is."""
    if not folder.is_dir():
        # Only the leaf gets the private mode; parents (the home itself) are the user's.
        folder.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            folder.mkdir(mode=PRIVATE_DIR_MODE)
    make_private(folder, PRIVATE_DIR_MODE)
    return folder


def make_private(path: Path, mode: int = PRIVATE_FILE_MODE) -> None:
    """chmod ``path`` to ``mode`` when group or others have any access (best effort)."""
    with contextlib.suppress(OSError):  # read-only, vanished, or not ours: leave it
        if path.stat().st_mode & 0o077:
            path.chmod(mode)


def find_config(start: Path | None = None) -> Path | None:
    """Return the nearest ``configs/llm_backends.yaml`` from ``start`` (default: cwd) up."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_RELPATH
        if candidate.is_file():
            return candidate
    return None


def home_for_config(config_path: Path) -> Path:
    """The home that a config file implies: the folder that holds its ``configs/`` folder."""
    config_path = Path(config_path).resolve()
    if config_path.parent.name == "configs":
        return config_path.parent.parent
    return config_path.parent


def default_data_home() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "owllm"


def resolve_home(
    home: str | os.PathLike[str] | Home | None = None,
    config_path: str | os.PathLike[str] | None = None,
) -> Home:
    """Resolve the home folder (see the module docstring for the order)."""
    if isinstance(home, Home):
        return home
    if home:
        return Home(Path(home).expanduser().resolve())
    env = os.environ.get(ENV_HOME)
    if env:
        return Home(Path(env).expanduser().resolve())
    if config_path:
        return Home(home_for_config(Path(config_path)))
    found = find_config()
    if found is not None:
        return Home(home_for_config(found))
    return Home(default_data_home())


def resolve_config_path(config_path: str | os.PathLike[str] | None = None,
                        home: Home | None = None) -> Path | None:
    """The config to use: an explicit path, else the home's ``configs/llm_backends.yaml``
    (when ``home`` is given and has one), else the nearest one from the working directory up.

    The home's own config wins over the walk-up: with ``--home``/``$OWLLM_HOME`` naming a
    project, a config found above an unrelated working directory would pair that project's
    state with someone else's models.
    """
    if config_path:
        return Path(config_path)
    if home is not None and (home.root / CONFIG_RELPATH).is_file():
        return home.root / CONFIG_RELPATH
    return find_config()
