"""Hostile-input tests: each file is named after the fault class it guards (path escape,
YAML bomb, cross-site request, proxy, saturation...).  The supervision tests' stub server
and stub backend are shared from tests/servers."""

from __future__ import annotations

from tests.servers.conftest import stub_backend  # noqa: F401  (a shared fixture)
