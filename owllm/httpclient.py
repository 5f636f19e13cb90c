"""Every HTTP request OWLLM itself sends to a server: probes, smokes, fixtures, clients.

Two rules live here and nowhere else:

* **Loopback never goes through a proxy.**  With ``HTTP_PROXY`` set (common on corporate
  machines) httpx would send ``http://127.0.0.1:PORT`` to the proxy, and a server that is
  listening looks dead.  A loopback URL gets ``trust_env=False`` (no proxy variables, no
  ``.netrc``); any other URL keeps the environment's settings.
* **TLS is verified unless the endpoint's config says otherwise.**  A remote endpoint's
  ``tls_verify: false`` or ``ca_bundle`` is recorded in its row (``extra``); the row's
  settings are registered by origin whenever a request for the row is prepared
  (:func:`row_headers`, which every row-based request calls), and :func:`request`,
  :func:`stream` and :func:`client` apply them to URLs of that origin.
* **The API key goes with every request, and nowhere else.**  A model's (or the tool
  server's) ``api_key_env`` names the variable that holds its key; the StateStore row records
  that *name* (``extra.api_key_env``), never the key, and :func:`bearer` reads the variable
  when a request is made.  The key is never logged, stored or printed.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from owllm.errors import UsageError

# The variable a launched server reads its key from (OWLLM's servers; vLLM reads its own).
SERVER_KEY_VAR = "OWLLM_API_KEY"


def is_loopback(url: str) -> bool:
    """True for ``http://127.0.0.1:…``, ``localhost`` and ``[::1]``."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key(env_name: str | None, *, what: str) -> str | None:
    """The key held by ``$env_name`` (None when no variable is named).

    ``what`` names the owner in the error (``model 'demo'``)."""
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if not value:
        raise UsageError(f"{what}: api_key_env names ${env_name}, which is not set",
                         hint=f"export {env_name}=<the key> before starting it")
    return value


def bearer(env_name: str | None, *, what: str = "server") -> dict[str, str]:
    """The ``Authorization`` header for a server whose key is in ``$env_name``."""
    key = api_key(env_name, what=what)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _extra(row: Mapping[str, Any] | None) -> Mapping[str, Any]:
    extra = (row or {}).get("extra") or {}
    return extra if isinstance(extra, Mapping) else {}


# origin -> False (no verification) or a CA bundle path; see the module docstring.
_TLS: dict[str, bool | str] = {}


def _origin(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


@functools.lru_cache(maxsize=16)
def _ca_context(ca_bundle: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_bundle)


def tls_verify(verify: bool = True, ca_bundle: str | None = None) -> bool | ssl.SSLContext:
    """httpx's ``verify`` for an endpoint's settings: the system's CAs by default, the
    endpoint's own CA bundle, or no verification at all (``tls_verify: false``)."""
    if not verify:
        return False
    return _ca_context(ca_bundle) if ca_bundle else True


def remember_tls(url: str, verify: bool = True, ca_bundle: str | None = None) -> None:
    """Apply these TLS settings to every later request to ``url``'s origin."""
    if verify and not ca_bundle:
        _TLS.pop(_origin(url), None)
    else:
        _TLS[_origin(url)] = ca_bundle or False


def _verify_for(url: str) -> bool | ssl.SSLContext:
    setting = _TLS.get(_origin(url))
    if setting is None:
        return True
    return tls_verify(False) if setting is False else tls_verify(True, str(setting))


def row_headers(row: Mapping[str, Any] | None) -> dict[str, str]:
    """Headers for a server recorded in the StateStore: the bearer key of the variable named
    in ``extra.api_key_env``, after the endpoint's own ``extra.headers`` (backend: remote).
    Registers the row's TLS settings (``extra.tls_verify``, ``extra.ca_bundle``) too."""
    extra = _extra(row)
    url = str((row or {}).get("url") or "")
    if url.startswith("https://"):
        remember_tls(url, extra.get("tls_verify") is not False, extra.get("ca_bundle"))
    name = extra.get("api_key_env")
    headers = {str(k): str(v) for k, v in (extra.get("headers") or {}).items()}
    if name:
        headers.update(bearer(name, what=f"server {(row or {}).get('model_id')!r}"))
    return headers


def served_model(row: Mapping[str, Any]) -> str:
    """The ``model`` field for requests to a recorded server: the name the endpoint knows
    (``extra.served_model``, backend: remote), else the model id OWLLM's servers serve."""
    return str(_extra(row).get("served_model") or row["model_id"])


def safe_url(url: str) -> str:
    """``url`` without user, password, query or fragment: fit for errors and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def endpoint_answers(row: Mapping[str, Any]) -> bool:
    """True when an attached endpoint's ``/v1/models`` answers 200 (its health: OpenAI's
    API has no /health), within the row's ``extra.timeout_s``."""
    url = str(row.get("url") or "")
    if not url:
        return False
    try:
        timeout = float(_extra(row).get("timeout_s") or 10.0)
        return get(url + "/v1/models", headers=row_headers(row),
                   timeout=timeout).status_code == 200
    except (httpx.HTTPError, UsageError):
        return False


def client(base_url: str = "", *, headers: Mapping[str, str] | None = None,
           timeout: float = 30.0) -> httpx.Client:
    """An ``httpx.Client`` that follows the module's rules for ``base_url``."""
    return httpx.Client(base_url=base_url, headers=dict(headers or {}), timeout=timeout,
                        trust_env=not is_loopback(base_url) if base_url else True,
                        verify=_verify_for(base_url) if base_url else True)


def request(method: str, url: str, *, headers: Mapping[str, str] | None = None,
            timeout: float = 30.0, **kwargs: Any) -> httpx.Response:
    """One request (``httpx.request`` with the module's rules)."""
    kwargs.setdefault("verify", _verify_for(url))
    return httpx.request(method, url, headers=dict(headers or {}), timeout=timeout,
                         trust_env=not is_loopback(url), **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return request("POST", url, **kwargs)


def stream(method: str, url: str, *, headers: Mapping[str, str] | None = None,
           timeout: float = 30.0, **kwargs: Any) -> Any:
    """``httpx.stream`` with the module's rules (a context manager)."""
    kwargs.setdefault("verify", _verify_for(url))
    return httpx.stream(method, url, headers=dict(headers or {}), timeout=timeout,
                        trust_env=not is_loopback(url), **kwargs)
