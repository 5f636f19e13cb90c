"""Installers behind one small Protocol: uv (preferred) and ``python -m venv`` + pip (fallback).

Both run as child processes whose output goes to a log file (its latest line is shown with
the running progress step); on Linux the child is killed when its builder dies
(``PR_SET_PDEATHSIG``), so a kill -9 of the builder never leaves an installer writing into a
directory that a later call is about to clean up.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from filelock import FileLock

from owllm.envs.pipconf import PipSettings, torch_index_args, uv_source_args
from owllm.envs.spec import BuildSpec, canonical_name
from owllm.errors import EnvError

ENV_INSTALLER = "OWLLM_INSTALLER"  # uv | pip: force one (tests, benchmarks)
TAIL_LINES = 40


def venv_python(venv: Path) -> Path:
    """The interpreter of a venv, the platform's way."""
    if os.name == "nt":
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


@dataclass(frozen=True)
class InstallPlan:
    """What to install into one env, with where from."""

    spec: BuildSpec
    pip: PipSettings
    torch_policy: str = "auto"
    constraints_file: Path | None = None  # --from-constraints: install exactly these pins


class InstallFailed(EnvError):
    """An installer exited non-zero; ``tail`` holds its last output lines."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message + ("\n" + tail if tail else ""),
                         hint="see the env log under <home>/.owllm/logs/")
        self.tail = tail


class Installer(Protocol):
    """Creates a venv and installs a plan into it."""

    name: str

    def version(self) -> str: ...

    def create_venv(self, venv: Path, base_python: Path, plan: InstallPlan,
                    log: Path) -> None: ...

    def install(self, venv: Path, plan: InstallPlan, log: Path) -> None: ...


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_logged(cmd: Sequence[str], log: Path, *, env: dict[str, str] | None = None,
               progress: Callable[[str], None] | None = None,
               on_start: Callable[[], None] | None = None) -> None:
    """Run ``cmd``, append its output to ``log``; raise InstallFailed with the tail."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        proc = subprocess.Popen(
            [str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, text=True, errors="replace",
            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        if on_start is not None:
            on_start()
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            tail.append(line.rstrip())
            if progress is not None:
                progress(line.rstrip())
        code = proc.wait()
        out.write(f"[exit {code}]\n")
    if code != 0:
        raise InstallFailed(f"{Path(cmd[0]).name} exited with {code}", "\n".join(tail))


def _child_env(pip: PipSettings, spec: BuildSpec | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VIRTUAL_ENV", None)  # never install into the orchestrator's own venv
    if pip.cert and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = pip.cert
    for pair in spec.build_env if spec else ():
        name, _, value = pair.partition("=")
        env.setdefault(name, value)  # the user's own setting wins
    return env


def _overrides(spec: BuildSpec) -> list[str]:
    """uv overrides that drop packages: a never-true marker removes a dependency."""
    return [f'{name} ; sys_platform == "never"' for name in (*spec.exclude, *spec.no_deps)]


class Wheelhouse:
    """OWLLM's machine-wide folder of wheels it compiled from source (llama-cpp-python).

    uv treats a registry sdist as a new revision on every resolution here and compiles it
    again (measured: 4 min per env on 2 cores), so after an install that built one of the
    spec's ``keep_built_wheels`` the wheel is copied from uv's cache into this folder, and
    every later install of a spec with the same build settings finds it (``--find-links``).
    Folders are keyed by the build environment (CMAKE_ARGS...), so a CPU build never serves
    a CUDA env.  ``$OWLLM_WHEEL_CACHE`` moves it; deleting it only costs a rebuild.
    """

    def __init__(self, spec: BuildSpec, root: Path | None = None) -> None:
        base = root or Path(os.environ.get("OWLLM_WHEEL_CACHE")
                            or Path.home() / ".cache" / "owllm" / "wheels")
        digest = hashlib.sha256("\n".join((sys.platform, *spec.build_env)).encode())
        self.path = base / digest.hexdigest()[:12]
        self.names = tuple(canonical_name(n).replace("-", "_") for n in spec.keep_built_wheels)

    def find_links(self) -> tuple[str, ...]:
        return (str(self.path),) if self.path.is_dir() else ()

    def missing(self, spec: BuildSpec) -> tuple[str, ...]:
        """The spec's ``keep_built_wheels`` with no kept wheel (of the pinned version)."""
        pins = {canonical_name(p).replace("-", "_"): p.split(";")[0].partition("==")[2].strip()
                for p in spec.packages}
        return tuple(shown for shown, name in zip(spec.keep_built_wheels, self.names, strict=True)
                     if not any(self.path.glob(f"{name}-{pins.get(name) or '*'}-*.whl")))

    def harvest(self, uv_cache: Path, since: float) -> list[Path]:
        """Copy the wheels uv built since ``since`` for our names into the wheelhouse."""
        kept = []
        for name in self.names:
            for wheel in uv_cache.glob(f"sdists-v*/**/{name}-*.whl"):
                target = self.path / wheel.name
                if wheel.stat().st_mtime < since or target.exists():
                    continue
                self.path.mkdir(parents=True, exist_ok=True)
                tmp = self.path / f".{wheel.name}.{os.getpid()}.tmp"
                shutil.copyfile(wheel, tmp)
                os.replace(tmp, target)  # never a half-copied wheel under its real name
                kept.append(target)
        return kept


def uv_cache_dir(exe: str) -> Path | None:
    if os.environ.get("UV_CACHE_DIR"):
        return Path(os.environ["UV_CACHE_DIR"])
    out = subprocess.run([exe, "cache", "dir"], capture_output=True, text=True, check=False)
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


class UvInstaller:
    """uv from the ``uv`` Python package (or PATH)."""

    name = "uv"

    def __init__(self, exe: str, progress: Callable[[str], None] | None = None,
                 on_install_start: Callable[[], None] | None = None) -> None:
        self.exe = exe
        self.progress = progress
        self.on_install_start = on_install_start

    def version(self) -> str:
        out = subprocess.run([self.exe, "--version"], capture_output=True, text=True, check=False)
        return out.stdout.strip() or "uv"

    def create_venv(self, venv: Path, base_python: Path, plan: InstallPlan,
                    log: Path) -> None:
        # --seed puts pip in the env (users reinstall from constraints with it); it is
        # fetched from the same sources as everything else.
        sources = uv_source_args(plan.pip, plan.spec.extra_index_urls, plan.spec.find_links)
        sources = [a for i, a in enumerate(sources)
                   if a != "--constraint" and (i == 0 or sources[i - 1] != "--constraint")]
        run_logged([self.exe, "venv", "--quiet", "--no-project", "--seed", *sources,
                    "--python", str(base_python), str(venv)], log,
                   env=_child_env(plan.pip), progress=self.progress)

    def install(self, venv: Path, plan: InstallPlan, log: Path) -> None:
        spec = plan.spec
        if not spec.keep_built_wheels:
            self._install(venv, plan, log)
            return
        house = Wheelhouse(spec)
        house.path.parent.mkdir(parents=True, exist_ok=True)
        # One compile per machine: a second env with the same build waits, then finds the
        # wheel (two homes building llamacpp-cpu at once would compile twice otherwise).
        with FileLock(str(house.path.parent / f".{house.path.name}.lock")):
            started = time.time()
            self._install(venv, plan, log, house.find_links())
            cache = uv_cache_dir(self.exe)
            for kept in house.harvest(cache, started) if cache else []:
                with open(log, "a", encoding="utf-8") as out:
                    out.write(f"kept the built wheel {kept.name} in {house.path}\n")

    def _install(self, venv: Path, plan: InstallPlan, log: Path,
                 find_links: tuple[str, ...] = ()) -> None:
        spec = plan.spec
        base = [self.exe, "pip", "install", "--python", str(venv_python(venv))]
        sources = uv_source_args(plan.pip, spec.extra_index_urls,
                                 (*spec.find_links, *find_links))
        torch_args, _ = torch_index_args(spec.torch_index, plan.torch_policy, plan.pip)
        env = _child_env(plan.pip, spec)
        if plan.constraints_file is not None:
            run_logged([*base, *sources, *torch_args, "--no-deps", "-r",
                        str(plan.constraints_file)], log, env=env, progress=self.progress,
                       on_start=self.on_install_start)
            return
        overrides = _overrides(spec)
        extra: list[str] = []
        if overrides:
            override_file = venv.parent / "overrides.txt"
            override_file.write_text("\n".join(overrides) + "\n", encoding="utf-8")
            extra = ["--override", str(override_file)]
        no_deps = {canonical_name(n) for n in spec.no_deps}
        main = [p for p in spec.packages if canonical_name(p) not in no_deps]
        # "--" ends the options: a requirement is never read as one (issue 13), even if a
        # spec that skipped check_requirements ever got here.
        run_logged([*base, *sources, *torch_args, *extra, "--", *main], log, env=env,
                   progress=self.progress, on_start=self.on_install_start)
        if spec.no_deps:
            run_logged([*base, *sources, *torch_args, "--no-deps", "--", *spec.no_deps], log,
                       env=env, progress=self.progress)


class PipInstaller:
    """``python -m venv`` + the env's own pip, which reads the user's pip config itself."""

    name = "pip"

    def __init__(self, progress: Callable[[str], None] | None = None,
                 on_install_start: Callable[[], None] | None = None) -> None:
        self.progress = progress
        self.on_install_start = on_install_start

    def version(self) -> str:
        return "pip (venv)"

    def create_venv(self, venv: Path, base_python: Path, plan: InstallPlan,
                    log: Path) -> None:
        run_logged([str(base_python), "-m", "venv", str(venv)], log, progress=self.progress)

    def install(self, venv: Path, plan: InstallPlan, log: Path) -> None:
        spec = plan.spec
        if spec.exclude and plan.constraints_file is None:
            raise EnvError(f"env {spec.key!r} leaves out dependencies "
                           f"({', '.join(spec.exclude)}), which needs uv",
                           hint="pip install uv (or unset OWLLM_INSTALLER=pip)")
        base = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
        sources: list[str] = []
        for url in spec.extra_index_urls:
            sources += ["--extra-index-url", url]
        for link in spec.find_links:
            sources += ["--find-links", link]
        torch_args, _ = torch_index_args(spec.torch_index, plan.torch_policy, plan.pip)
        env = _child_env(PipSettings(), spec)
        if plan.constraints_file is not None:
            run_logged([*base, *sources, *torch_args, "--no-deps", "-r",
                        str(plan.constraints_file)], log, env=env, progress=self.progress,
                       on_start=self.on_install_start)
            return
        no_deps = {canonical_name(n) for n in spec.no_deps}
        main = [p for p in spec.packages if canonical_name(p) not in no_deps]
        run_logged([*base, *sources, *torch_args, "--", *main], log, env=env,
                   progress=self.progress, on_start=self.on_install_start)
        if spec.no_deps:
            run_logged([*base, *sources, *torch_args, "--no-deps", "--", *spec.no_deps], log,
                       env=env, progress=self.progress)


def describe_install(installer: Installer, plan: InstallPlan) -> str:
    """What ``installer.install(plan)`` does, for its progress step: a source build takes
    minutes (llama-cpp-python: ~4 on 2 cores), so it is named."""
    spec = plan.spec
    text = (f"installing {spec.key} from {plan.constraints_file.name}" if plan.constraints_file
            else f"installing {len(spec.packages)} package{'s' * (len(spec.packages) != 1)} "
                 f"into {spec.key}")
    text += f" with {installer.name}"
    compiled = (Wheelhouse(spec).missing(spec) if isinstance(installer, UvInstaller)
                else spec.keep_built_wheels)  # pip keeps no wheels: it builds every time
    # An extra index or wheel folder may hold a binary wheel (llama.cpp's CUDA builds).
    verb = "may compile" if spec.extra_index_urls or spec.find_links else "compiling"
    if compiled:
        return f"{text} ({verb} {', '.join(compiled)} from source: minutes)"
    kept = ", ".join(spec.keep_built_wheels)
    return f"{text} ({kept} from OWLLM's kept wheel)" if kept else text


def find_uv() -> str | None:
    """uv's binary: the ``uv`` package's, else one on PATH."""
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


def choose_installer(progress: Callable[[str], None] | None = None,
                     on_install_start: Callable[[], None] | None = None) -> Installer:
    """uv when available (or forced with ``$OWLLM_INSTALLER``), else pip."""
    forced = os.environ.get(ENV_INSTALLER, "").strip().lower()
    uv = find_uv() if forced != "pip" else None
    if forced == "uv" and uv is None:
        raise EnvError(f"{ENV_INSTALLER}=uv but uv is not installed", hint="pip install uv")
    if uv is not None:
        return UvInstaller(uv, progress, on_install_start)
    return PipInstaller(progress, on_install_start)
