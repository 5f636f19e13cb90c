"""The managed tool server's functions, under their older import path.

The tool server is one configuration of the one supervisor: it lives in
:mod:`owllm.servers.tool_server` (so ``tools/`` no longer sits above ``servers/`` with a
lifecycle of its own).  These names stay importable from here for users' code."""

from __future__ import annotations

from owllm.servers.tool_server import (
    KIND,
    NAME,
    start_tool_server,
    stop_tool_server,
    tool_server_status,
)

__all__ = ["KIND", "NAME", "start_tool_server", "stop_tool_server", "tool_server_status"]
