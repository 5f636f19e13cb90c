"""EnvRegistry: resolve a model's env_key and provision that shared env atomically.

``ensure_env(key)`` under a per-key FileLock:

1. fast path — the StateStore says READY with the expected fingerprint and the interpreter
   exists: return at once, no subprocess;
2. a published env with the expected fingerprint is probed; PASS → READY;
3. otherwise (missing, spec changed — logged with the diff —, probe FAIL): build in a fresh
   ``.envs/.store/<key>-<uuid>``, install, probe with the env's own python, write
   ``constraints/<key>.txt``, publish with an atomic symlink swap, then mark READY.

The row is BUILDING before anything on disk changes and READY only after the swap, so a
READY row never points at a half-built env (see :mod:`owllm.envs.layout`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from owllm import _progress as progress
from owllm.config import Config, ModelConfig, load_config
from owllm.envs import layout
from owllm.envs.installer import (
    InstallFailed,
    InstallPlan,
    choose_installer,
    describe_install,
    find_uv,
)
from owllm.envs.pipconf import read_pip_settings
from owllm.envs.probe_runner import run_probe
from owllm.envs.resolve import Resolution, resolve_env_key, spec_for_key
from owllm.envs.spec import BuildSpec, EnvsConfig, find_envs_config, load_envs_config
from owllm.errors import EnvError, OwllmError
from owllm.hardware import HardwareProfile, detect_hardware
from owllm.paths import Home, check_env_key, resolve_config_path, resolve_home
from owllm.state_store import ENV_BUILDING, ENV_FAILED, ENV_READY, StateStore, now_iso

# The CUDA version a model that needs CUDA is resolved for on a host without one
# (:meth:`EnvRegistry.resolve_nominal`): a typical CUDA host's.
NOMINAL_CUDA = "12.4"
ENV_CRASH_AT = "OWLLM_ENV_CRASH_AT"  # fault injection for tests: kill -9 at a named step
LOCK_TIMEOUT_S = float(os.environ.get("OWLLM_ENV_LOCK_TIMEOUT", "7200"))


@dataclass(frozen=True)
class EnvSpec:
    """A READY shared env."""

    key: str
    path: Path
    python_executable: Path
    packages: dict[str, str] = field(default_factory=dict, compare=False)
    torch_version: str | None = None
    cuda_available: bool | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Removed:
    """What :meth:`EnvRegistry.remove` deleted (or, with ``dry_run``, would delete): the
    files of :func:`owllm.envs.layout.removal_plan` and whether a StateStore row went.
    True when anything was there."""

    env_key: str
    items: tuple[layout.Removal, ...]
    row: bool
    dry_run: bool = False

    def __bool__(self) -> bool:
        return bool(self.items) or self.row

    def to_dict(self) -> dict[str, Any]:
        return {"env_key": self.env_key, "removed": bool(self) and not self.dry_run,
                "dry_run": self.dry_run, "state_row": self.row,
                "would_delete" if self.dry_run else "deleted":
                    [item.to_dict() for item in self.items]}


def _crash_point(name: str) -> None:
    if os.environ.get(ENV_CRASH_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class EnvRegistry:
    """Shared envs of one home: resolve keys, provision, probe, list.

    ``progress``: builds, probes and waits report on stderr (:mod:`owllm._progress`); False
    silences them and what they nest, None leaves it to ``progress.default_enabled()``.
    """

    def __init__(self, home: str | os.PathLike[str] | Home | None = None,
                 config_path: str | os.PathLike[str] | None = None,
                 profile: HardwareProfile | None = None, *,
                 envs_config_path: str | os.PathLike[str] | None = None,
                 progress: bool | None = None) -> None:
        self.config_path = resolve_config_path(config_path)
        self.home = (home if isinstance(home, Home)
                     else resolve_home(home, self.config_path)).ensure()
        self._profile = profile
        self._envs_path = Path(envs_config_path) if envs_config_path else None
        self.progress = progress
        self.store = StateStore(self.home.state_db)

    # -- configuration --------------------------------------------------------------------

    @cached_property
    def profile(self) -> HardwareProfile:
        return self._profile or detect_hardware()

    @cached_property
    def envs_config(self) -> EnvsConfig:
        return load_envs_config(self._envs_path or find_envs_config(self.config_path))

    @cached_property
    def config(self) -> Config | None:
        return load_config(self.config_path) if self.config_path else None

    def resolve(self, model: str | ModelConfig) -> Resolution:
        """The env_key (and why) for a model id, ModelConfig or model path."""
        return resolve_env_key(self._model(model), self.profile, self.envs_config)

    def resolve_nominal(self, model: str | ModelConfig) -> Resolution:
        """As :meth:`resolve`, except that a model that needs CUDA on a host without one is
        resolved as on a typical CUDA host (:data:`NOMINAL_CUDA`): its env key, and so the
        ids of its tests, are the ones a GPU run shows (where they skip, marked ``gpu``)."""
        config = self._model(model)
        profile = self.profile
        if config.device == "cuda" and not profile.has_cuda:
            profile = dataclasses.replace(profile, cuda_version=NOMINAL_CUDA)
        return resolve_env_key(config, profile, self.envs_config)

    def resolutions(self) -> dict[str, Resolution]:
        """Every configured model's resolution, by key."""
        out: dict[str, Resolution] = {}
        for model in (self.config.models.values() if self.config else ()):
            try:
                resolution = self.resolve(model)
            except OwllmError:
                continue
            out.setdefault(resolution.key, resolution)
        return out

    def spec(self, key: str) -> BuildSpec:
        """What ``key`` installs (UsageError listing the known keys when unknown).  A
        ``keys:`` entry is taken as it is, before every configured model is resolved (that
        loads the backends: ~0.1-0.3 s of a build's fixed overhead, issue #18)."""
        explicit = self.envs_config.explicit_spec(key)
        if explicit is not None:
            return explicit
        return spec_for_key(key, self.envs_config, self.resolutions())

    def _model(self, model: str | ModelConfig) -> ModelConfig:
        if isinstance(model, ModelConfig):
            return model
        if self.config is not None and model in self.config.models:
            return self.config.models[model]
        if self.config is not None and not Path(model).exists() and "/" not in model:
            return self.config.model(model)  # unknown id: UsageError with the known ids
        return ModelConfig(model_id=Path(model).name or str(model), base_model=str(model))

    # -- provisioning ---------------------------------------------------------------------

    def get_env_for_model(self, model: str | ModelConfig) -> EnvSpec:
        """The READY env of a model (built if needed)."""
        resolution = self.resolve(model)
        return self.ensure_env(resolution.key, spec=resolution.spec)

    def fingerprint(self, spec: BuildSpec) -> str:
        """Hash of the spec, the base interpreter and the installer choice (no subprocess)."""
        uv = find_uv() if os.environ.get("OWLLM_INSTALLER", "") != "pip" else None
        try:
            uv_version = metadata.version("uv") if uv else None
        except metadata.PackageNotFoundError:
            uv_version = "path"
        data = {"spec": spec.to_dict(), "python": str(_base_python()),
                "python_version": sys.version.split()[0],
                "installer": f"uv {uv_version}" if uv else "pip"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def ensure_env(self, key: str, *, spec: BuildSpec | None = None, verify: bool = False,
                   from_constraints: bool = False, force: bool = False) -> EnvSpec:
        """Return the READY env ``key``, building it when missing, changed or unhealthy.

        ``verify`` probes even on the fast path (a FAIL rebuilds); ``from_constraints``
        reinstalls exactly ``constraints/<key>.txt``; ``force`` rebuilds regardless.
        """
        check_env_key(key)  # before it names a lock, a log or a build folder
        spec = spec or self.spec(key)
        expected = self.fingerprint(spec)
        if not (verify or from_constraints or force):
            hit = self._fast_path(key, expected)
            if hit is not None:
                return hit
        lock = self._lock(key)
        with self._holding(lock, f"waiting for another process working on env {key}"):
            for stale in layout.stale_builds(self.home, key, locked=True):
                layout.remove_path(stale)
            if not (from_constraints or force):
                if not verify:
                    hit = self._fast_path(key, expected)  # another process built it
                    if hit is not None:
                        return hit
                reused = self._reuse(key, spec, expected)
                if reused is not None:
                    return reused
            with progress.step(f"building env {key} (log: {self._log_file(key)})",
                               enabled=self.progress):
                return self._build(key, spec, expected, from_constraints)

    @contextlib.contextmanager
    def _holding(self, lock: FileLock, waiting: str) -> Iterator[None]:
        """Hold ``lock``; a wait for another process (its build can take minutes) is shown."""
        try:
            lock.acquire(timeout=0)
        except Timeout:
            with progress.step(waiting, enabled=self.progress):
                lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def _fast_path(self, key: str, expected: str) -> EnvSpec | None:
        row = self.store.get_env(key)
        if (row and row["status"] == ENV_READY and row.get("fingerprint") == expected
                and row.get("python_path") and Path(row["python_path"]).exists()):
            return self._env_spec(key, row)
        return None

    def _env_spec(self, key: str, row: dict[str, Any]) -> EnvSpec:
        return EnvSpec(key=key, path=Path(row["path"]), python_executable=Path(row["python_path"]),
                       packages=dict(row.get("packages") or {}),
                       torch_version=row.get("torch_version"),
                       cuda_available=row.get("cuda_available"), fingerprint=row["fingerprint"])

    def _reuse(self, key: str, spec: BuildSpec, expected: str) -> EnvSpec | None:
        """A published env with the expected fingerprint that passes its probe."""
        target = layout.current_target(self.home, key)
        if target is None:
            return None
        marker = layout.read_json(target / layout.ENV_MARKER) or {}
        if marker.get("fingerprint") != expected:
            old = marker.get("spec") or {}
            diff = {k: {"old": old.get(k), "new": v} for k, v in spec.to_dict().items()
                    if old.get(k) != v}
            self._log(key, f"spec changed: recreating env {key}", {"diff": diff,
                      "old_fingerprint": marker.get("fingerprint"), "new_fingerprint": expected})
            return None
        result = self.probe(key, spec)
        if result["status"] != "PASS":
            self._log(key, f"env {key} failed its probe: rebuilding", {"errors": result["errors"]})
            return None
        return self._mark_ready(key, spec, expected, result)

    def _build(self, key: str, spec: BuildSpec, expected: str,
               from_constraints: bool) -> EnvSpec:
        constraints = self.constraints_path(key)
        if from_constraints and not constraints.is_file():
            raise EnvError(f"no constraints file for {key!r} at {constraints}",
                           hint=f"build it once: owllm env create {key}")
        self.store.upsert_env(key, status=ENV_BUILDING, fingerprint=expected,
                              spec=spec.to_dict(), last_error=None)
        self.store.record_event("env", key, "BUILD_STARTED", f"building env {key}",
                                {"pid": os.getpid(), "from_constraints": from_constraints})
        log = self._log_file(key)
        root = layout.new_build_dir(self.home, key)
        try:
            # The installer's output lines become the running step's detail (uv's
            # "Building llama-cpp-python==…" while it compiles).
            installer = choose_installer(progress.update, lambda: _crash_point("mid_install"))
            plan = InstallPlan(spec=spec, pip=read_pip_settings(),
                               torch_policy=str(self.envs_config.torch_index.get("use", "auto")),
                               constraints_file=constraints if from_constraints else None)
            with progress.step(f"creating the venv with {installer.name}"):
                installer.create_venv(root / ".venv", _base_python(), plan, log)
            _crash_point("after_venv")
            with progress.step(describe_install(installer, plan)):
                installer.install(root / ".venv", plan, log)
            _crash_point("after_install")
            with progress.step(f"probing the new env {key}"):
                result = run_probe(layout.python_for(root), spec)
            if result["status"] != "PASS":
                raise EnvError(f"env {key} failed its health probe: "
                               + "; ".join(f"{e['module']}: {e['error']}"
                                           for e in result["errors"]))
            _crash_point("after_probe")
            pins = "".join(f"{n}=={v}\n" for n, v in sorted(result["packages"].items()))
            layout.write_text_atomic(constraints, f"# owllm env {key} (fingerprint {expected})\n"
                                                  "# exact pins of the built env; recreate with "
                                                  f"`owllm env create {key} --from-constraints`\n"
                                                  + pins)
            layout.write_json_atomic(root / layout.ENV_MARKER, {
                "key": key, "fingerprint": expected, "spec": spec.to_dict(),
                "installer": installer.name, "packages": result["packages"]})
            _crash_point("before_publish")
            previous = layout.publish(self.home, key, root)
            _crash_point("after_publish")
        except BaseException as exc:
            tail = exc.tail if isinstance(exc, InstallFailed) else ""
            message = exc.message if isinstance(exc, OwllmError) else repr(exc)
            self.store.upsert_env(key, status=ENV_FAILED, last_error=message[-4000:])
            self._log(key, f"env {key} build failed", {"error": message[-4000:], "tail": tail})
            layout.remove_path(root)
            if isinstance(exc, OwllmError) or not isinstance(exc, Exception):
                raise
            raise EnvError(f"building env {key} failed: {exc!r}") from exc
        if previous is not None and previous.resolve() != root.resolve():
            layout.remove_path(previous)
        return self._mark_ready(key, spec, expected, result)

    def _mark_ready(self, key: str, spec: BuildSpec, expected: str,
                    result: dict[str, Any]) -> EnvSpec:
        link = layout.link_path(self.home, key)
        row = self.store.upsert_env(
            key, status=ENV_READY, path=str(link), python_path=str(layout.python_for(link)),
            torch_version=result.get("torch_version"), cuda_available=result.get("cuda_available"),
            fingerprint=expected, spec=spec.to_dict(), packages=result.get("packages"),
            last_error=None, ready_at=now_iso())
        return self._env_spec(key, row)

    # -- probing and files ----------------------------------------------------------------

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.home.locks_dir / f"env-{check_env_key(key)}.lock"),
                        timeout=LOCK_TIMEOUT_S)

    def constraints_path(self, key: str) -> Path:
        return self.home.constraints_dir / f"{check_env_key(key)}.txt"

    def probe(self, key: str, spec: BuildSpec | None = None) -> dict[str, Any]:
        """Run the health probe in the published env ``key`` (with drift check)."""
        spec = spec or self.spec(key)
        python = layout.python_for(layout.link_path(self.home, key))
        constraints = self.constraints_path(key)
        with progress.step(f"probing env {key}", enabled=self.progress):
            return run_probe(python, spec, constraints if constraints.is_file() else None)

    def mark_failed(self, key: str, error: str) -> None:
        """Record a failed probe so the next ``ensure_env`` rebuilds."""
        if self.store.get_env(key) is not None:
            self.store.upsert_env(key, status=ENV_FAILED, last_error=error[-4000:])

    def remove(self, key: str, *, dry_run: bool = False) -> Removed:
        """Unpublish and delete env ``key`` (its constraints file stays); returns what went
        (truthy when anything was there).  Only what :func:`layout.removal_plan` lists is
        deleted: never a link's target outside ``.envs/.store``.  ``dry_run`` deletes
        nothing (and takes no lock: a build in progress may add to the list)."""
        check_env_key(key)
        if dry_run:
            return Removed(key, tuple(layout.removal_plan(self.home, key)),
                           self.store.get_env(key) is not None, dry_run=True)
        with self._lock(key):
            plan = layout.removal_plan(self.home, key, locked=True)
            for item in plan:
                layout.remove_path(item.path)
            row = self.store.delete_env(key)
        return Removed(key, tuple(plan), row)

    def _log_file(self, key: str) -> Path:
        return self.home.logs_dir / f"env-{check_env_key(key)}.log"

    def _log(self, key: str, message: str, data: dict[str, Any]) -> None:
        self.store.record_event("env", key, None, message, data)
        with self._log_file(key).open("a", encoding="utf-8") as out:
            out.write(f"[{now_iso()}] {message}: {json.dumps(data, default=str)}\n")


def _base_python() -> Path:
    """The interpreter new envs are built from: the base of the one running OWLLM."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(base)
