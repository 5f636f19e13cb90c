"""The server manager: start, stop, restart and reconcile model servers.

A model's server is one configuration of the supervisor (:mod:`owllm.servers.supervisor`,
kind ``model``): this module adds what only models have — the backend's launch spec in the
model's env, a port claimed under the home's port lock, readiness that may need a real
completion, a retry on a port lost to another program and on a CPU fault of a fast kernel.
State lives in the StateStore, so any process (CLI, pytest workers, a restarted manager) sees
the same servers.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from owllm import _progress as progress
from owllm import capabilities, httpclient
from owllm._store_faults import home_lock
from owllm.backends import BackendContext, LaunchSpec, get_backend, is_attached
from owllm.backends._kernels import CPU_FAULT_SIGNALS, KernelChoice, record_fallback
from owllm.config import Config, ModelConfig, load_config
from owllm.envs import EnvRegistry
from owllm.errors import ServerDied, ServerError
from owllm.paths import Home, check_model_id, resolve_home
from owllm.servers.executor import Executor
from owllm.servers.ports import choose_port
from owllm.servers.process import probe_health, tail
from owllm.servers.supervisor import Supervisor
from owllm.state_store import LIVE_STATUSES, MODEL_KIND, ServerStatus, StateStore, now_iso

if TYPE_CHECKING:
    import subprocess

    from owllm.servers.owners import Owner

HOST = "127.0.0.1"
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
    """Starts each configured model's server on a dynamically allocated loopback port.

    A model's server is the supervisor's (:mod:`owllm.servers.supervisor`) server of kind
    ``model`` named by the model id; this class is its configuration: the backend's argv,
    the port claim, the readiness rule, the retries (a lost port, a CPU-fault kernel)."""

    def __init__(self, config: Config | str | os.PathLike[str], home: Home | str | None = None,
                 registry: EnvRegistry | None = None) -> None:
        self.config = config if isinstance(config, Config) else load_config(config)
        self.home = (home if isinstance(home, Home)
                     else resolve_home(home, self.config.path)).ensure()
        self.store = StateStore(self.home.state_db)
        self.supervisor = Supervisor(self.home, self.store)
        self.registry = registry or EnvRegistry(self.home, config_path=self.config.path)
        # The run that owns what this manager launches (servers/owners.py): recorded before
        # each launch, so the run's watchdog stops it if the run dies.  None: nobody's
        # (`owllm server start`: the server is meant to outlive the command).
        self.owner: Owner | None = None

    @property
    def _children(self) -> dict[str, subprocess.Popen[bytes]]:
        """The processes this manager launched, by model id (to reap them)."""
        return {name: ex.proc for (kind, name), ex in self.supervisor.executors.items()
                if kind == MODEL_KIND and ex.proc is not None}

    # -- start ----------------------------------------------------------------------------

    def start_server(self, model_id: str) -> dict[str, Any]:
        """Start (or return the running) server of ``model_id``; returns its StateStore row."""
        check_model_id(model_id)
        model = self.config.model(model_id)

        def start() -> dict[str, Any]:
            # On a first run this builds the env and the weights (demo model, GGUF) too:
            # minutes, so it is a progress step.
            what = (f"attaching to the {model.backend} endpoint of {model_id}"
                    if is_attached(model.backend)
                    else f"starting the {model.backend} server of {model_id}")
            with progress.step(what,
                               enabled=getattr(self.registry, "progress", None)):
                return self._start(model)

        row, _reused = self.supervisor.ensure(
            MODEL_KIND, model_id, start, what=f"server of model {model_id!r}",
            busy_hint=f"retry when it is less busy, or replace it: owllm server restart "
                      f"{model_id}")
        return row

    def _start(self, model: ModelConfig) -> dict[str, Any]:
        backend = get_backend(model.backend)
        if is_attached(model.backend):
            return self._attach(model, backend)
        env = self.registry.get_env_for_model(model)
        base_dir = self.config.home_relative_base
        if model.adapter_dir and not Path(model.adapter_dir).is_absolute():
            model = dataclasses.replace(model, adapter_dir=str(base_dir / model.adapter_dir))
        self.store.upsert_model(model.model_id, model.backend, model.base_model, env.key,
                                model.params())
        ctx = BackendContext(home=self.home, env=env, base_dir=base_dir, registry=self.registry)
        model_path = backend.model_path(model, ctx)
        log_path = self.home.logs_dir / f"{model.model_id}.log"
        self.supervisor.claim(MODEL_KIND, model.model_id,
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

    def _attach(self, model: ModelConfig, backend: Any) -> dict[str, Any]:
        """An endpoint OWLLM does not run (backend remote): no env, no process, no port
        claim; the backend's readiness ladder, then a RUNNING row without a pid."""
        self.store.upsert_model(model.model_id, model.backend, model.base_model, None,
                                model.params())
        cleared = {"pid": None, "pgid": None, "pid_create_time": None,
                   "pid_start_ticks": None, "boot_id": None, "env_key": None,
                   "log_path": None, "stopped_at": None}
        self.supervisor.claim(MODEL_KIND, model.model_id,
                              self.owner.claim(self.home) if self.owner else None)
        started = time.monotonic()
        try:
            fields = backend.attach(model)
        except ServerError as exc:
            self.store.upsert_server(model.model_id, kind=MODEL_KIND,
                                     status=ServerStatus.FAILED, last_error=exc.message,
                                     started_at=now_iso(), **cleared)
            raise
        fields["extra"]["startup_s"] = round(time.monotonic() - started, 3)
        return self.store.upsert_server(model.model_id, kind=MODEL_KIND,
                                        status=ServerStatus.RUNNING, started_at=now_iso(),
                                        last_error=None, **cleared, **fields) | {"healthy": True}

    def _claim_port(self, model: ModelConfig, env_key: str, log_path: Path) -> int:
        with home_lock(self.home.locks_dir / "ports.lock"):
            taken = [row["port"] for status in LIVE_STATUSES
                     for row in self.store.list_servers(status=status)
                     if row["port"] and (row["kind"], row["model_id"]) != (MODEL_KIND,
                                                                          model.model_id)]
            port = choose_port(model.port, taken, HOST)
            self.store.upsert_server(
                model.model_id, kind=MODEL_KIND, status=ServerStatus.STARTING, port=port,
                host=HOST, url=f"http://{HOST}:{port}", env_key=env_key,
                log_path=str(log_path), pid=None, pgid=None, pid_create_time=None,
                pid_start_ticks=None, boot_id=None, started_at=now_iso(), stopped_at=None,
                last_error=None)
        return port

    def _run(self, model: ModelConfig, spec: LaunchSpec, port: int,
             log_path: Path) -> dict[str, Any]:
        url = spec.url or f"http://{HOST}:{port}"
        health_only = [False]  # /health said 200 but a completion failed

        def ready() -> bool:
            if not probe_health(url, spec.health_path):
                return False
            ok = not spec.ready_needs_completion or probe_completion(
                url, model.model_id, headers=httpclient.bearer(model.api_key_env))
            health_only[0] = not ok
            return ok

        def explain(exc: ServerError) -> None:
            if health_only[0]:  # said first: the log excerpt after it can be long
                head, _, rest = exc.message.partition("\n")
                exc.message = (f"{head}\n{spec.health_path} answered 200 but a one-token "
                               f"completion failed: the server is up, its engine is "
                               f"not\n{rest}").rstrip()

        # A key variable inherited from the caller's shell would make a server without
        # api_key_env demand a key nobody sends: only the model's own key gets through.
        inherited = {k: v for k, v in os.environ.items() if k not in SERVER_KEY_VARS}
        executor = Executor(spec.argv, log_path, check=ready, env={**inherited, **spec.env},
                            deadline_s=model.startup_timeout_s,
                            stall_timeout_s=model.stall_timeout_s,
                            what=f"server of model {model.model_id!r}",
                            model_id=model.model_id)
        return self.supervisor.run(
            MODEL_KIND, model.model_id, executor, explain=explain,
            ready=lambda: {"url": url, "extra": {"api_key_env": model.api_key_env,
                                     "kernels": {k.setting: k.to_dict()
                                                 for k in spec.kernels},
                                     "capabilities": probe_at_start(url, model)}})

    # -- stop / restart -------------------------------------------------------------------

    def stop_server(self, model_id: str) -> dict[str, Any] | None:
        """Stop the whole process tree of a model's server; returns the final row."""
        check_model_id(model_id)  # it names a lock file: never a path out of the home
        return self.supervisor.stop(MODEL_KIND, model_id)

    def restart_server(self, model_id: str) -> dict[str, Any]:
        """Stop, then start, the server of ``model_id``."""
        self.stop_server(model_id)
        return self.start_server(model_id)

    def stop_all(self) -> list[dict[str, Any]]:
        """Stop every live model server of the home; returns their final rows."""
        return [row for row in (self.stop_server(r["model_id"])
                                for r in self.store.list_servers(kind=MODEL_KIND)
                                if r["status"] in LIVE_STATUSES) if row]

    # -- status ---------------------------------------------------------------------------

    def reconcile(self, model_id: str) -> dict[str, Any] | None:
        """Bring one server's row in line with reality and return it with ``healthy``."""
        return self.supervisor.reconcile(MODEL_KIND, model_id)

    def status(self, model_id: str | None = None) -> list[dict[str, Any]]:
        """Reconciled rows of one model or of all model servers (like ``ollama ps``)."""
        ids = [model_id] if model_id else [r["model_id"] for r in
                                            self.store.list_servers(kind=MODEL_KIND)]
        return [row for row in map(self.reconcile, ids) if row is not None]

    def logs(self, model_id: str, lines: int = 50) -> str:
        """The last ``lines`` lines of the server's log."""
        check_model_id(model_id)
        return tail(self.home.logs_dir / f"{model_id}.log", lines)

    def wait_gone(self, model_id: str, timeout: float = 10.0) -> bool:
        """Wait until the server of ``model_id`` is no longer live; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.reconcile(model_id)
            if row is None or row["status"] not in LIVE_STATUSES:
                return True
            time.sleep(0.1)
        return False


def probe_at_start(url: str, model: ModelConfig) -> dict[str, Any]:
    """What the ready server can do, probed (:mod:`owllm.capabilities`) within
    START_BUDGET_S; a probe that breaks is recorded, never a failed start."""
    try:
        return capabilities.probe_record(url, model.model_id,
                                         headers=httpclient.bearer(model.api_key_env),
                                         budget_s=capabilities.START_BUDGET_S)
    except Exception as exc:  # a probe's own bug must not fail a start that worked
        return {"error": f"the capability probe failed: {type(exc).__name__}: {exc}"[:300]}


def _fallback_for(spec: LaunchSpec, exc: ServerDied) -> KernelChoice | None:
    """The kernel choice to give up after ``exc``, when it was a CPU fault."""
    if exc.signal not in CPU_FAULT_SIGNALS:
        return None
    return next((k for k in spec.kernels if k.fallback is not None), None)


def _lost_port(log_path: Path) -> bool:
    return "address already in use" in tail(log_path).lower()


def get_llm_server_manager(config_path: str | os.PathLike[str] | None = None,
                           home: str | os.PathLike[str] | Home | None = None) -> LLMServerManager:
    """The guide's entry point: a manager for the models of one config file."""
    from owllm.paths import resolve_config_path

    path = resolve_config_path(config_path)
    if path is None:
        raise ServerError("no configs/llm_backends.yaml found", hint="pass config_path")
    return LLMServerManager(path, home=home if isinstance(home, Home) else
                            (resolve_home(home, path) if home else None))
