"""A small client for the tool server (httpx)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from owllm import httpclient
from owllm.tools.errors import ToolServerError
from owllm.tools.parser import ToolCall


class ToolServerClient:
    """Talks to a tool server at ``url`` (``http://127.0.0.1:8763``).

    Every method raises :class:`ToolServerError`: ``status`` 0 when the server cannot be
    reached, else the HTTP status with the typed error body's ``code`` and ``path``.
    """

    def __init__(self, url: str, timeout: float = 30.0,
                 headers: Mapping[str, str] | None = None) -> None:
        """``headers``: e.g. the API key (:func:`owllm.httpclient.row_headers` of its row).
        A loopback URL is never sent through a proxy."""
        self.url = url.rstrip("/")
        self._http = httpclient.client(self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ToolServerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, json: Any = None) -> Any:
        try:
            response = self._http.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ToolServerError(0, "unreachable", f"{self.url}{path}: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            if isinstance(error, dict):
                raise ToolServerError(response.status_code, str(error.get("code", "error")),
                                      str(error.get("message", "")), error.get("path"))
            raise ToolServerError(response.status_code, "http_error", response.text[:200])
        if body is None:
            raise ToolServerError(response.status_code, "bad_response", "body is not JSON")
        return body

    def health(self) -> dict[str, Any]:
        """``GET /health`` → ``{"status": "ok" | "saturated", ...}``: a saturated server (every
        call slot taken) is alive and answers again when a slot frees."""
        body: dict[str, Any] = self._request("GET", "/health")
        if body.get("status") not in ("ok", "saturated"):
            raise ToolServerError(200, "unhealthy", f"health says {body!r}")
        return body

    def list_tools(self) -> list[dict[str, Any]]:
        """``GET /tools`` → OpenAI-style tool specs."""
        tools: list[dict[str, Any]] = self._request("GET", "/tools")["tools"]
        return tools

    def call(self, call: Mapping[str, Any] | ToolCall) -> dict[str, Any]:
        """``POST /call`` → ``{"id", "tool", "result"}``."""
        payload = call.to_dict() if isinstance(call, ToolCall) else dict(call)
        body: dict[str, Any] = self._request("POST", "/call", payload)
        return body
