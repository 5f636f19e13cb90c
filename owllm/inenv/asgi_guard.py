"""The hostile-request guard in front of OWLLM's model servers: pure ASGI, standard library only.

In-env module (``owllm.inenv``): it never imports the host-side ``owllm``, nor its siblings
(vLLM gets a copy of this one file).  ``transformers_app`` and ``llamacpp_server`` import it
relatively and wrap their app in :class:`Guard`; for vLLM the launcher copies it as
``owllm_asgi_guard.py`` into the home's run folder, puts that folder on the server's
``PYTHONPATH`` and passes ``--middleware owllm_asgi_guard.VllmGuard`` (vLLM adds it as the
outermost middleware, so it runs before vLLM's own CORS and key checks).  The tool server
(stdlib ``http.server``) imports the same policy functions.

What a request must pass before the app sees it, in this order (issue 13):

1. ``Host`` names loopback (``127.0.0.1``, ``localhost``, ``[::1]``; any port) or a name in
   ``OWLLM_ALLOWED_HOSTS`` (comma-separated; ``*`` turns the check off) -> else 403.  A web
   page that rebinds its DNS name to 127.0.0.1 still sends its own name here.
2. ``Origin``, when sent, is a loopback (or allowed) origin -> else 403: a page on another
   site must not drive the server, not even with a "simple" request that needs no preflight.
3. With ``OWLLM_API_KEY`` set: ``Authorization: Bearer <key>`` on every path but ``/health``
   -> else 401 (compared with ``hmac.compare_digest``; the key is never logged).
4. ``POST``/``PUT``/``PATCH`` carry ``Content-Type: application/json`` -> else 415 (text/plain
   and form bodies are what a cross-site page can send without a preflight).
5. The body is at most ``OWLLM_MAX_BODY_BYTES`` (16 MiB by default): a larger
   ``Content-Length`` is a 413 before one byte is read; a chunked body is cut at the cap.
6. A JSON body nests at most ``MAX_JSON_DEPTH`` levels -> else 400 (deeper input makes
   recursive code raise ``RecursionError``).  Malformed JSON goes on to the app, which says so
   in its own words.

Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

ALLOWED_HOSTS_VAR = "OWLLM_ALLOWED_HOSTS"
API_KEY_VAR = "OWLLM_API_KEY"
MAX_BODY_VAR = "OWLLM_MAX_BODY_BYTES"
BIND_HOST_VAR = "OWLLM_BIND_HOST"  # set by launchers that cannot pass the bind host in code
DEFAULT_MAX_BODY = 16 << 20
MAX_JSON_DEPTH = 100
OPEN_PATHS = frozenset({"/health"})  # answered without the API key: liveness probes
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
PARSE_OFF_LOOP = 256 << 10  # bodies bigger than this are checked in a worker thread

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# -- policy (pure functions, shared with the tool server) -------------------------------------

def parse_allowed_hosts(value: str | Iterable[str] | None) -> frozenset[str]:
    """``"a.example, 10.0.0.5 [fe80::1]"`` (or a list) -> lower-case host names, no ports."""
    items = value.replace(",", " ").split() if isinstance(value, str) else list(value or ())
    out = set()
    for item in items:
        host = "*" if item.strip() == "*" else split_host(item.strip())
        if host:
            out.add(host)
    return frozenset(out)


def split_host(value: str) -> str | None:
    """The host of a ``Host`` header value (``name[:port]``, ``[v6][:port]``), lower-case;
    None when it is malformed (a non-numeric port, an unclosed bracket, blanks)."""
    value = value.strip().lower()
    if not value or any(c.isspace() for c in value):
        return None
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return host or None
    host, sep, port = value.partition(":")
    if sep and not port.isdigit():
        return None  # also rejects a bare IPv6 address, which must be bracketed in Host
    return host.rstrip(".") or None


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether a ``Host`` header may reach the server (a missing one may not: every browser
    sends it, and HTTP/1.1 requires it)."""
    if "*" in allowed:
        return True
    host = split_host(header) if header else None
    return host is not None and (is_loopback_host(host) or host in allowed)


def origin_allowed(header: str | None, allowed: frozenset[str] = frozenset()) -> bool:
    """Whether an ``Origin`` header is acceptable: none (not a cross-site browser request),
    or an http(s) origin on a loopback or allowed host.  ``null`` (sandboxed frames, file://
    pages) is cross-site."""
    if header is None:
        return True
    if "*" in allowed:
        return True
    try:
        parts = urlsplit(header.strip())
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    host = host.lower().rstrip(".")
    return is_loopback_host(host) or host in allowed


def bearer_ok(header: str | None, key: str) -> bool:
    """``Authorization: Bearer <key>``, compared in constant time."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8"), key.encode("utf-8"))


def is_json_type(header: str | None) -> bool:
    """``application/json`` with or without parameters (``; charset=utf-8``)."""
    return bool(header) and str(header).split(";", 1)[0].strip().lower() == "application/json"


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted without recursion; stops past ``limit``
    (returns ``limit + 1``)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def check_json(raw: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """A reason to refuse the JSON body, or None (including for malformed JSON: the app
    reports that itself)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        return f"the JSON body nests deeper than {limit} levels"
    except ValueError:
        return None
    if json_depth(value, limit) > limit:
        return f"the JSON body nests deeper than {limit} levels"
    return None


def bind_warning(host: str | None, allowed: frozenset[str]) -> str | None:
    """The loud warning for a server reachable from other machines, or None."""
    if "*" in allowed:
        return ("WARNING: OWLLM_ALLOWED_HOSTS=* turns the Host check off: a web page can reach "
                "this server through DNS rebinding.")
    if host is None:
        return None
    name = split_host(host) or split_host(f"[{host}]") or host
    if is_loopback_host(name):
        return None
    return (f"WARNING: listening on {host}, which is NOT loopback: other machines can reach "
            f"this server.  Only Host headers {sorted(allowed) or '(none)'} besides loopback "
            f"are answered ({ALLOWED_HOSTS_VAR}); set {API_KEY_VAR} to require a key.")


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _max_body_from_env() -> int:
    value = os.environ.get(MAX_BODY_VAR, "").strip()
    try:
        return int(value) if value else DEFAULT_MAX_BODY
    except ValueError:
        print(f"owllm guard: ignoring {MAX_BODY_VAR}={value!r} (not an integer)",
              file=sys.stderr, flush=True)
        return DEFAULT_MAX_BODY


class _Refused(Exception):
    def __init__(self, status: int, message: str, code: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


# -- the middleware ---------------------------------------------------------------------------

class Guard:
    """Pure ASGI middleware applying the checks of the module docstring.

    Settings default to the environment (``OWLLM_ALLOWED_HOSTS``, ``OWLLM_API_KEY``,
    ``OWLLM_MAX_BODY_BYTES``, ``OWLLM_BIND_HOST``), so ``Guard(app)`` is all a server that
    gets its configuration from its launcher needs.
    """

    key_vars: tuple[str, ...] = (API_KEY_VAR,)

    def __init__(self, app: Any, *, api_key: str | None = None,
                 allowed_hosts: str | Iterable[str] | None = None, max_body: int | None = None,
                 bind_host: str | None = None, open_paths: frozenset[str] = OPEN_PATHS,
                 max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.api_key = api_key if api_key is not None else next(
            (os.environ[v] for v in self.key_vars if os.environ.get(v)), None)
        self.allowed = parse_allowed_hosts(
            allowed_hosts if allowed_hosts is not None else os.environ.get(ALLOWED_HOSTS_VAR))
        self.max_body = max_body if max_body is not None else _max_body_from_env()
        self.open_paths = open_paths
        self.max_depth = max_depth
        warning = bind_warning(bind_host or os.environ.get(BIND_HOST_VAR), self.allowed)
        if warning:
            print(f"owllm guard: {warning}", file=sys.stderr, flush=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        headers = _headers(scope)
        try:
            self._check_request(scope, headers)
        except _Refused as refused:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            else:
                await _refuse(send, refused)
            return
        if scope["type"] == "websocket" or scope.get("method") not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        try:
            raw = await self._read_body(headers, receive)
        except _Refused as refused:
            await _refuse(send, refused)
            return
        if raw is None:
            return  # the client went away
        if raw:
            reason = await _off_loop(check_json, raw, self.max_depth) \
                if len(raw) > PARSE_OFF_LOOP else check_json(raw, self.max_depth)
            if reason:
                await _refuse(send, _Refused(400, reason, "json_too_deep"))
                return
        await self.app(scope, _replay(raw, receive), send)

    def _check_request(self, scope: Scope, headers: dict[str, str]) -> None:
        host = headers.get("host")
        if not host_allowed(host, self.allowed):
            raise _Refused(403, f"Host {_short(host)} is not allowed: this server answers "
                                "only loopback names (127.0.0.1, localhost, [::1]) and those "
                                f"listed in {ALLOWED_HOSTS_VAR}", "forbidden_host")
        origin = headers.get("origin")
        if not origin_allowed(origin, self.allowed):
            raise _Refused(403, f"cross-site request from Origin {_short(origin)} refused",
                           "cross_origin")
        if self.api_key and scope.get("path", "") not in self.open_paths and \
                not bearer_ok(headers.get("authorization"), self.api_key):
            raise _Refused(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           "invalid_api_key", {"www-authenticate": "Bearer"})
        if scope["type"] == "http" and scope.get("method") in BODY_METHODS and \
                not is_json_type(headers.get("content-type")):
            raise _Refused(415, f"{scope.get('method')} bodies must be JSON: send "
                                "'Content-Type: application/json'", "unsupported_media_type")

    async def _read_body(self, headers: dict[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise _Refused(400, "Content-Length is not a number", "bad_content_length")
            if int(declared) > self.max_body:
                raise _Refused(413, f"request body of {int(declared)} bytes is over this "
                                    f"server's limit of {self.max_body} bytes "
                                    f"({MAX_BODY_VAR})", "request_too_large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # chunked, or more than declared: stop reading now
                raise _Refused(413, f"request body is over this server's limit of "
                                    f"{self.max_body} bytes ({MAX_BODY_VAR})",
                               "request_too_large")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


class VllmGuard(Guard):
    """The guard as vLLM's ``--middleware`` (constructed with the app only): the key is
    ``OWLLM_API_KEY``, else vLLM's own ``VLLM_API_KEY``, required on every path but
    ``/health`` (vLLM itself guards only ``/v1``-style prefixes)."""

    key_vars = (API_KEY_VAR, "VLLM_API_KEY")


# -- ASGI plumbing ----------------------------------------------------------------------------

def _headers(scope: Scope) -> dict[str, str]:
    """Request headers by lower-case name; a repeated Host/Origin/… keeps its first value."""
    out: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


def _short(value: str | None) -> str:
    return "(none)" if value is None else repr(value[:100])


async def _off_loop(func: Callable[..., Any], *args: Any) -> Any:
    # Parsing megabytes of JSON on the event loop would stall /health for everyone.
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


async def _refuse(send: Send, refused: _Refused) -> None:
    data = json.dumps(error_body(refused.message, "invalid_request_error", None,
                                 refused.code)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(data)).encode()),
               # the body may be unread: this connection cannot carry another request
               (b"connection", b"close")]
    headers += [(k.encode(), v.encode()) for k, v in refused.headers.items()]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


def _replay(raw: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the buffered body, then the real stream (the
    disconnect, when it comes)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return replay
