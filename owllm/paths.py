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

import os
from dataclasses import dataclass
from pathlib import Path

CONFIG_RELPATH = Path("configs") / "llm_backends.yaml"
ENV_HOME = "OWLLM_HOME"


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
        """Create the folders that must exist before anything is written; return self."""
        for folder in (self.state_dir, self.logs_dir, self.locks_dir):
            folder.mkdir(parents=True, exist_ok=True)
        return self


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
