"""The server manager: start, stop, restart and reconcile model servers.

State lives in the StateStore, so any process (CLI, pytest workers, a restarted manager) sees
the same servers.  A server is ours when its recorded pid is alive *and* has the recorded
create time; a pid reused by another program reads as gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from owllm import httpclient, progress
from owllm.backends import BackendContext, LaunchSpec, get_backend
from owllm.backends._kernels import CPU_FAULT_SIGNALS, KernelChoice, record_fallback
from owllm.config import Config, ModelConfig, load_config
from owllm.envs import EnvRegistry
from owllm.errors import OwllmError, ServerDied, ServerError, StateStoreError
from owllm.paths import Home, check_model_id, resolve_home
from owllm.servers.ports import LIVE_STATUSES, choose_port
from owllm.servers.process import (
    BUSY,
    HEALTHY,
    SERVER_TOKEN_VAR,
    descendants,
    identity_from_row,
    identity_of,
    kill_group,
    launch,
    probe_health,
    reap_leftovers,
    tail,
    wait_answering,
    wait_ready,
)
from owllm.state_store import (
    SERVER_CRASHED,
    SERVER_FAILED,
    SERVER_RUNNING,
    SERVER_STARTING,
    SERVER_STOPPED,
    StateStore,
    now_iso,
)
from owllm.store_faults import FULL, READ_ONLY, StateStoreFault, home_lock

if TYPE_CHECKING:
    from owllm.servers.reaper import Owner

HOST = "127.0.0.1"
# A live server of ours whose /health was too slow once is waited for, not replaced (under
# load one probe's 2 s is not enough): its /health is asked again, each time for up to
# BUSY_PROBE_TIMEOUT_S, for up to BUSY_WAIT_S; only one whose port refuses connections for
# SILENT_GRACE_S in a row (or that died) is replaced.  See process.wait_answering.
BUSY_WAIT_S = 60.0
BUSY_PROBE_TIMEOUT_S = 10.0
SILENT_GRACE_S = 10.0
# Where servers read their API key: OWLLM's own servers, and vLLM's.
SERVER_KEY_VARS = frozenset({httpclient.SERVER_KEY_VAR, "VLLM_API_KEY"})


def probe_completion(url: str, model_id: str, timeout: float = 30.0,
                     headers: dict[str, str] | None = None) -> bool:
    """A real one-token generation: the readiness rule for servers whose /health can lie."""
    try:
        response = httpclient.post(url + "/v1/completions", timeout=timeout, headers=headers,
                                   json={"model": model_id, "prompt": "Hello",
                                         "max_tokens": 1, "temperature": 0})
        return response.status_code == 200 and bool(response.json().get("choices"))
    except (httpx.HTTPError, ValueError):
        return False


class LLMServerManager:
    """Starts each configured model's server on a dynamically allocated loopback port."""

    def __init__(self, config: Config | str | os.PathLike[str], home: Home | str | None = None,
                 registry: EnvRegistry | None = None) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.home = (home if isinstance(home, Home)
                     else resolve_home(home, self.config.path)).ensure()
        self.store = StateStore(self.home.state_db)
        self.registry = registry or EnvRegistry(self.home, config_path=self.config.path)
        self._children: dict[str, Any] = {}  # Popen objects we can reap
        # The run that owns what this manager launches (servers/reaper.py): recorded before
        # each launch, so the run's watchdog stops it if the run dies.  None: nobody's
        # (`owllm server start`: the server is meant to outlive the command).
        self.owner: Owner | None = None

    # -- start ----------------------------------------------------------------------------

    def start_server(self, model_id: str) -> dict[str, Any]:
        """Start (or return the running) server of ``model_id``; returns its StateStore row."""
        check_model_id(model_id)
        model = self.config.model(model_id)
        with home_lock(self.home.locks_dir / f"server-{model_id}.lock"):
            current = self.reconcile(model_id)
            if current and current["status"] == SERVER_RUNNING and current.get("healthy"):
                return current
            if current and current["status"] in LIVE_STATUSES:  # alive (reconciled)
                reused = self._reuse_live(current)
                if reused is not None:
                    return reused
                self._stop(current)  # alive but answering nothing: replace it
            # On a first run this builds the env and the weights (demo model, GGUF) too:
            # minutes, so it is a progress step.
            with progress.step(f"starting the {model.backend} server of {model_id}",
                               enabled=getattr(self.registry, "progress", None)):
                return self._start(model)

    def _reuse_live(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """A live server of ours that failed one health probe: its row (healthy) once it
        answers; a ServerError, leaving it running, while it is busy past BUSY_WAIT_S; None
        when it is to be replaced (it died, or its port refused connections throughout
        SILENT_GRACE_S).  "Unhealthy" alone never kills a server: that cut requests."""
        ident = identity_from_row(row)
        url = row.get("url") or ""
        if ident is None or not url:
            return None
        verdict = wait_answering(ident, url, wait_s=BUSY_WAIT_S,
                                 probe_timeout_s=BUSY_PROBE_TIMEOUT_S,
                                 silent_grace_s=SILENT_GRACE_S)
        model_id = row["model_id"]
        if verdict == HEALTHY:
            if row["status"] != SERVER_RUNNING:  # its starter died; it serves now
                row = self.store.upsert_server(model_id, status=SERVER_RUNNING)
            return row | {"healthy": True}
        if verdict == BUSY:
            raise ServerError(
                f"the server of model {model_id!r} (pid {ident.pid}) is alive and its port "
                f"accepts connections, but /health did not answer 200 within "
                f"{BUSY_WAIT_S:.0f}s; it was left running (it may be busy serving requests, "
                f"which a restart would cut)",
                hint=f"retry when it is less busy, or replace it: owllm server restart "
                     f"{model_id}")
        return None

    def _start(self, model: ModelConfig) -> dict[str, Any]:
        backend = get_backend(model.backend)
        env = self.registry.get_env_for_model(model)
        base_dir = self.config.home_relative_base
        if model.adapter_dir and not Path(model.adapter_dir).is_absolute():
            model = dataclasses.replace(model, adapter_dir=str(base_dir / model.adapter_dir))
        self.store.upsert_model(model.model_id, model.backend, model.base_model, env.key,
                                model.params())
        ctx = BackendContext(home=self.home, env=env, base_dir=base_dir, registry=self.registry)
        model_path = backend.model_path(model, ctx)
        log_path = self.home.logs_dir / f"{model.model_id}.log"
        self.store.set_server_owner(model.model_id,
                                    self.owner.claim(self.home) if self.owner else None)
        port_retried = False
        while True:
            port = self._claim_port(model, env.key, log_path)
            spec = backend.launch(model, model_path, ctx, HOST, port)
            try:
                return self._run(model, spec, port, log_path)
            except ServerDied as exc:
                # A CPU fault with a host-dependent fast kernel: fall back once, remembered.
                choice = _fallback_for(spec, exc)
                if choice is not None and choice.setting not in ctx.kernel_overrides:
                    safe = record_fallback(ctx, choice, str(exc.signal), str(exc.process))
                    ctx = dataclasses.replace(
                        ctx, kernel_overrides={**ctx.kernel_overrides, choice.setting: safe})
                    continue
                if port_retried or not _lost_port(log_path):
                    raise
            except ServerError:
                if port_retried or not _lost_port(log_path):
                    raise
            port_retried = True  # a port lost to another program between check and bind

    def _claim_port(self, model: ModelConfig, env_key: str, log_path: Path) -> int:
        with home_lock(self.home.locks_dir / "ports.lock"):
            taken = [row["port"] for status in LIVE_STATUSES
                     for row in self.store.list_servers(status=status)
                     if row["port"] and row["model_id"] != model.model_id]
            port = choose_port(model.port, taken, HOST)
            self.store.upsert_server(
                model.model_id, status=SERVER_STARTING, kind="model", port=port, host=HOST,
                url=f"http://{HOST}:{port}", env_key=env_key, log_path=str(log_path),
                pid=None, pgid=None, pid_create_time=None, pid_start_ticks=None,
                boot_id=None, started_at=now_iso(), stopped_at=None, last_error=None)
        return port

    def _run(self, model: ModelConfig, spec: LaunchSpec, port: int,
             log_path: Path) -> dict[str, Any]:
        url = f"http://{HOST}:{port}"
        token = f"{model.model_id}-{uuid.uuid4().hex[:16]}"
        try:
            log_offset = log_path.stat().st_size
        except OSError:
            log_offset = 0
        # A key variable inherited from the caller's shell would make a server without
        # api_key_env demand a key nobody sends: only the model's own key gets through.
        inherited = {k: v for k, v in os.environ.items() if k not in SERVER_KEY_VARS}
        proc = launch(spec.argv, log_path,
                      env={**inherited, **spec.env, SERVER_TOKEN_VAR: token})
        self._children[model.model_id] = proc
        try:
            ident = identity_of(proc.pid)
            self.store.upsert_server(model.model_id, **ident.row_fields(),
                                     extra={"token": token})
        except BaseException as exc:
            # Nothing records this server's pid, so nothing could ever stop it: stop it now.
            kill_group(proc.pid, proc.pid)  # its own session: the group id is its pid
            proc.wait()
            reap_leftovers(token)
            self._children.pop(model.model_id, None)
            if isinstance(exc, OwllmError):
                exc.message = (f"the server of model {model.model_id!r} (pid {proc.pid}) was "
                               f"stopped: it could not be recorded in the state store, and "
                               f"a server without a record could never be stopped.\n"
                               f"{exc.message}")
            with contextlib.suppress(StateStoreError):  # often fails the same way
                self.store.upsert_server(model.model_id, status=SERVER_FAILED,
                                         last_error=str(exc)[:4000], stopped_at=now_iso())
            raise

        health_only = [False]  # /health said 200 but a completion failed

        def ready() -> bool:
            if not probe_health(url, spec.health_path):
                return False
            ok = not spec.ready_needs_completion or probe_completion(
                url, model.model_id, headers=httpclient.bearer(model.api_key_env))
            health_only[0] = not ok
            return ok

        try:
            seconds = wait_ready(proc, ready, log_path, deadline_s=model.startup_timeout_s,
                                 stall_timeout_s=model.stall_timeout_s,
                                 what=f"server of model {model.model_id!r}",
                                 log_offset=log_offset)
        except BaseException as exc:
            # Whatever ended the wait (a timeout, Ctrl-C, an error in a check), what was
            # launched is stopped: a start that gave up must not leave a server running.
            kill_group(ident.pgid, ident.pid)
            proc.wait()
            reap_leftovers(token)
            if isinstance(exc, ServerError):
                if health_only[0]:  # said first: the log excerpt after it can be long
                    head, _, rest = exc.message.partition("\n")
                    exc.message = (f"{head}\n{spec.health_path} answered 200 but a "
                                   f"one-token completion failed: the server is up, its "
                                   f"engine is not\n{rest}").rstrip()
                why = exc.message
            else:
                why = (f"the start was interrupted ({type(exc).__name__}: {exc}) before the "
                       f"server was ready; it was stopped")
            # The store failing too must not hide why the start failed.
            with contextlib.suppress(StateStoreError):
                self.store.upsert_server(model.model_id, status=SERVER_FAILED,
                                         last_error=why[:4000], stopped_at=now_iso())
            if isinstance(exc, ServerError):
                raise exc from None
            raise
        return self.store.upsert_server(model.model_id, status=SERVER_RUNNING,
                                        extra={"startup_s": round(seconds, 3),
                                               "token": token,
                                               "api_key_env": model.api_key_env,
                                               "kernels": {k.setting: k.to_dict()
                                                           for k in spec.kernels},
                                               "children": descendants(ident.pid)}) | {
            "healthy": True}

    # -- stop / restart -------------------------------------------------------------------

    def stop_server(self, model_id: str) -> dict[str, Any] | None:
        """Stop the whole process tree of a model's server; returns the final row."""
        check_model_id(model_id)  # it names a lock file: never a path out of the home
        with home_lock(self.home.locks_dir / f"server-{model_id}.lock"):
            row = self.store.get_server(model_id)
            if row is None:
                return None
            return self._stop(row)

    def _stop(self, row: dict[str, Any]) -> dict[str, Any]:
        ident = identity_from_row(row)
        if ident is not None and ident.alive():
            kill_group(ident.pgid, ident.pid)
        child = self._children.pop(row["model_id"], None)
        if child is not None:
            child.wait()
        _reap(row)
        return self.store.upsert_server(row["model_id"], status=SERVER_STOPPED,
                                        stopped_at=now_iso())

    def restart_server(self, model_id: str) -> dict[str, Any]:
        self.stop_server(model_id)
        return self.start_server(model_id)

    def stop_all(self) -> list[dict[str, Any]]:
        return [row for row in (self.stop_server(r["model_id"])
                                for r in self.store.list_servers(kind="model")
                                if r["status"] in LIVE_STATUSES) if row]

    # -- status ---------------------------------------------------------------------------

    def reconcile(self, model_id: str) -> dict[str, Any] | None:
        """Bring one server's row in line with reality and return it with ``healthy``."""
        row = self.store.get_server(model_id)
        if row is None:
            return None
        url = row.get("url") or (f"http://{row['host']}:{row['port']}" if row.get("port") else "")
        ident = identity_from_row(row)
        alive = ident is not None and ident.alive()
        status = row["status"]
        healthy = bool(url) and alive and probe_health(url)
        if status in LIVE_STATUSES and not alive:
            if status == SERVER_RUNNING or row.get("pid"):
                new, why = SERVER_CRASHED, "server process is gone (or its pid was reused)"
            else:
                new, why = SERVER_STOPPED, "start was interrupted before the server launched"
            row = self._save(model_id, status=new, last_error=why, stopped_at=now_iso())
            reaped = _reap(row)  # e.g. vLLM's engine core and worker after a SIGKILL
            if reaped:
                row["reaped_pids"] = reaped
            if url and probe_health(url):
                row["port_conflict"] = f"{url} answers but not from our process"
        elif status == SERVER_STARTING and healthy:
            # Its starter died (or is about to record this itself): it serves, so it runs.
            row = self._save(model_id, status=SERVER_RUNNING)
        row["healthy"] = healthy
        return row

    def _save(self, model_id: str, **fields: Any) -> dict[str, Any]:
        """``upsert_server``; where the store takes no writes (a read-only home, a full
        disk) the row as it would be, marked ``unsaved``: status still tells the truth."""
        try:
            return self.store.upsert_server(model_id, **fields)
        except StateStoreFault as fault:
            if fault.reason not in (READ_ONLY, FULL):
                raise
            return {**(self.store.get_server(model_id) or {"model_id": model_id}), **fields,
                    "unsaved": fault.reason}

    def status(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Reconciled rows of one model or of all model servers (like ``ollama ps``)."""
        ids = [model_id] if model_id else [r["model_id"] for r in
                                            self.store.list_servers(kind="model")]
        return [row for row in map(self.reconcile, ids) if row is not None]

    def logs(self, model_id: str, lines: int = 50) -> str:
        check_model_id(model_id)
        return tail(self.home.logs_dir / f"{model_id}.log", lines)

    def wait_gone(self, model_id: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.reconcile(model_id)
            if row is None or row["status"] not in LIVE_STATUSES:
                return True
            time.sleep(0.1)
        return False


def _fallback_for(spec: LaunchSpec, exc: ServerDied) -> KernelChoice | None:
    """The kernel choice to give up after ``exc``, when it was a CPU fault."""
    if exc.signal not in CPU_FAULT_SIGNALS:
        return None
    return next((k for k in spec.kernels if k.fallback is not None), None)


def _lost_port(log_path: Path) -> bool:
    return "address already in use" in tail(log_path).lower()


def _reap(row: dict[str, Any]) -> list[int]:
    """Leftovers of a server whose own process is gone (see process.reap_leftovers)."""
    extra = row.get("extra")
    if not isinstance(extra, dict) or not (extra.get("token") or extra.get("children")):
        return []
    boot = row.get("boot_id")
    return reap_leftovers(str(extra.get("token") or ""), extra.get("children") or [],
                          recorded_boot=boot if isinstance(boot, str) else None)


def get_llm_server_manager(config_path: str | os.PathLike[str] | None = None,
                           home: str | os.PathLike[str] | Home | None = None) -> LLMServerManager:
    """The guide's entry point: a manager for the models of one config file."""
    from owllm.paths import resolve_config_path

    path = resolve_config_path(config_path)
    if path is None:
        raise ServerError("no configs/llm_backends.yaml found", hint="pass config_path")
    return LLMServerManager(path, home=home if isinstance(home, Home) else
                            (resolve_home(home, path) if home else None))
