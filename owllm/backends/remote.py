"""``backend: remote``: any OpenAI-compatible endpoint OWLLM did not start (a vLLM fleet
behind a gateway, KServe, GPUStack, Ray Serve, a hosted API).

OWLLM provisions no env and launches nothing for it: ``server start`` *attaches* — a
readiness ladder (``GET /v1/models`` lists ``served_model`` → a one-token completion), then
a StateStore row with status RUNNING, the endpoint's URL, no pid and ``extra.managed``
false; ``server stop`` detaches (the row says STOPPED, nothing is signalled); reconciling
the row probes the endpoint instead of a pid (:mod:`owllm.servers.supervisor`).  Requests
carry ``served_model`` as their ``model`` field, the bearer key of ``api_key_env`` and the
configured ``headers`` (:func:`owllm.httpclient.row_headers` and ``served_model``).

What the endpoint can do is probed at attach time, never assumed
(:func:`owllm.capabilities.probe_record`: json_schema, the tools API, streaming, logprobs,
``n``...), recorded in ``extra.capabilities``; the smokes use that instead of the backend's
static :class:`~owllm.backends.Capabilities` and probe again what the attach left unknown.  TLS
certificates are verified (httpx's default) unless ``tls_verify: false``; ``ca_bundle``
names a private CA's PEM file (recorded in the row, so the smokes and suites verify the same
way: :func:`owllm.httpclient.row_headers`).  Errors name the URL without credentials and
the HTTP status, or the TLS failure.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from owllm import httpclient
from owllm.backends import (
    TOOL_CALL_RULES,
    BackendContext,
    Capabilities,
    LaunchSpec,
    option_problems,
)
from owllm.capabilities import probe_record
from owllm.config import ModelConfig
from owllm.errors import ServerError, UsageError

DEFAULT_TIMEOUT_S = 30.0
ATTACH_PROBE_BUDGET_S = 10.0  # the capability probes' share of an attach, at most
# Fields that configure a process OWLLM would launch: meaningless for an endpoint.
LAUNCH_FIELDS = ("env_key", "requirements", "server_args", "port", "device", "dtype",
                 "max_model_len")


def endpoint_root(base_url: str) -> str:
    """The URL requests are built on (``root + "/v1/..."``): ``base_url`` without a trailing
    ``/`` or ``/v1``, so ``https://h/v1``, ``https://h/`` and ``https://h`` are one endpoint."""
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def _headers(model: ModelConfig) -> dict[str, str]:
    headers = dict(model.headers)
    headers.update(httpclient.bearer(model.api_key_env, what=f"model {model.model_id!r}"))
    return headers


def _fail(model: ModelConfig, url: str, what: str, hint: str | None = None) -> ServerError:
    return ServerError(f"remote endpoint of model {model.model_id!r} ({httpclient.safe_url(url)}): "
                       f"{what}", hint=hint, model_id=model.model_id)


def _call(model: ModelConfig, method: str, url: str, timeout: float,
          **kwargs: Any) -> httpx.Response:
    """One request of the ladder; a connection failure or an auth refusal is a ServerError
    that names the URL (never its credentials) and the status."""
    verify = httpclient.tls_verify(model.tls_verify, model.ca_bundle)
    try:
        response = httpclient.request(method, url, headers=_headers(model), timeout=timeout,
                                      verify=verify, **kwargs)
    except httpx.TimeoutException as exc:
        raise _fail(model, url, f"no answer within timeout_s={timeout:g}s "
                    f"({type(exc).__name__})", hint="check base_url and that the endpoint "
                    "is up; raise timeout_s for a slow one") from exc
    except httpx.HTTPError as exc:
        tls = _tls_failure(exc)
        if tls is not None:
            raise _fail(model, url, tls, hint="set ca_bundle to the PEM file of the CA that "
                        "signed the endpoint's certificate (or tls_verify: false, for a test "
                        "endpoint only)") from exc
        raise _fail(model, url, f"cannot connect ({type(exc).__name__}: {exc})",
                    hint="check base_url and that the endpoint is up and reachable") from exc
    if response.status_code in (401, 403):
        var = f"${model.api_key_env}" if model.api_key_env else "no api_key_env set"
        raise _fail(model, url, f"HTTP {response.status_code}: wrong or missing API key "
                    f"({var})", hint="set api_key_env to the variable that holds the "
                    "endpoint's key, and export that variable")
    return response


def _tls_failure(exc: BaseException) -> str | None:
    """What went wrong with TLS, when that is why a request failed (httpx wraps the ssl
    module's error in a ConnectError)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS handshake failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate not trusted ({text})"
    return None


def _check_models(model: ModelConfig, root: str, served: str, timeout: float) -> None:
    url = root + "/v1/models"
    response = _call(model, "GET", url, timeout)
    if response.status_code != 200:
        raise _fail(model, url, f"HTTP {response.status_code}: {response.text[:300]}")
    try:
        names = [str(m.get("id")) for m in response.json().get("data") or []]
    except (ValueError, AttributeError) as exc:
        raise _fail(model, url, "answered 200 but not an OpenAI model list") from exc
    if served not in names:
        raise _fail(model, url, f"does not serve {served!r}; it lists: "
                    f"{', '.join(names) or '(none)'}",
                    hint="set served_model to one of the names it lists")


def _one_token(model: ModelConfig, root: str, served: str, timeout: float) -> None:
    body: dict[str, Any]
    if model.model_type == "instruct":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}
    else:
        path, body = "/v1/completions", {"prompt": "Hello"}
    url = root + path
    response = _call(model, "POST", url, timeout,
                     json={"model": served, "max_tokens": 1, "temperature": 0, **body})
    if response.status_code != 200:
        raise _fail(model, url, f"a one-token completion answered HTTP "
                    f"{response.status_code}: {response.text[:300]}",
                    hint="the endpoint lists the model but cannot generate with it")


def _tls_problems(model: ModelConfig) -> list[tuple[str, str]]:
    """TLS options that cannot apply: to a plain-HTTP URL, both at once, a missing CA file."""
    tls = [name for name, value in (("tls_verify", not model.tls_verify),
                                     ("ca_bundle", model.ca_bundle)) if value]
    if tls and not (model.base_url or "").lower().startswith("https://"):
        return [(name, f"{name} configures TLS, and base_url is not https://")
                for name in tls]
    if len(tls) == 2:
        return [("tls_verify", "tls_verify: false turns verification off, so ca_bundle "
                 "would not be used: keep one of them")]
    if model.ca_bundle and not Path(model.ca_bundle).is_file():
        return [("ca_bundle", f"{model.ca_bundle} is not a file (a PEM file of CA "
                 "certificates; a relative path is read from the config's home)")]
    return []


class RemoteBackend:
    """An OpenAI-compatible endpoint OWLLM attaches to (see the module docstring)."""

    name = "remote"
    # Assumed until probed at attach time (extra.capabilities of the row wins).
    capabilities = Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = "Tools:\n{tools}\n" + TOOL_CALL_RULES + "\nRequest: {prompt}"
    env_packages: dict[str, Any] = {}  # no env: nothing runs on this host

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        problems = option_problems(model, endpoint=True)
        defaults = ModelConfig(model_id=model.model_id, base_model=model.base_model)
        problems += [(name, f"{name} configures a server OWLLM launches; backend: remote "
                      "attaches to a running endpoint, so it does not apply")
                     for name in LAUNCH_FIELDS
                     if getattr(model, name) != getattr(defaults, name)]
        url = urlsplit(model.base_url or "")
        if url.username or url.password:
            problems.append(("base_url", "base_url must not carry credentials: put the key "
                             "in a variable and name it in api_key_env"))
        elif not url.hostname:
            problems.append(("base_url", f"{model.base_url!r} names no host"))
        elif url.query or url.fragment:
            problems.append(("base_url", "base_url takes no query or fragment"))
        problems += _tls_problems(model)
        problems += [("headers", f"header {key!r}: use api_key_env for the bearer key, "
                      "never the key in the config") for key in model.headers
                     if key.lower() == "authorization"]
        return problems

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        return model.served_model or model.model_id

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        raise UsageError(f"model {model.model_id!r}: backend remote attaches to "
                         f"{model.base_url}; it launches nothing",
                         hint="owllm server start attaches to it")

    def attach(self, model: ModelConfig) -> dict[str, Any]:
        """Run the readiness ladder against the endpoint; the row fields to record."""
        if not model.base_url:
            raise UsageError(f"model {model.model_id!r}: backend remote needs base_url")
        root = endpoint_root(model.base_url)
        served = model.served_model or model.model_id
        timeout = model.timeout_s or DEFAULT_TIMEOUT_S
        _check_models(model, root, served, timeout)
        _one_token(model, root, served, timeout)
        # Every capability probed (never a failure: a missing one is reported); unknowns
        # left by the budget are probed again by the smokes.
        capabilities = probe_record(root, served, headers=_headers(model), timeout=timeout,
                                    verify=httpclient.tls_verify(model.tls_verify,
                                                                 model.ca_bundle),
                                    budget_s=min(timeout, ATTACH_PROBE_BUDGET_S))
        parts = urlsplit(root)
        return {"url": root, "host": parts.hostname,
                "port": parts.port or (443 if parts.scheme == "https" else 80),
                "extra": {"managed": False, "served_model": served,
                          "api_key_env": model.api_key_env, "headers": dict(model.headers),
                          "timeout_s": timeout, "tls_verify": model.tls_verify,
                          "ca_bundle": model.ca_bundle,
                          "capabilities": capabilities}}
