"""The in-env side of ``owllm.envs.runner.run_in_env``: a script's result is one JSON object
on the last line of stdout; a failure is a non-zero exit with one line on stderr (the host
quotes it in its error)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def report(work: Callable[[], dict[str, Any]], *,
           failure: type[BaseException] | tuple[type[BaseException], ...],
           describe: Callable[[BaseException], str], code: int) -> int:
    """Run ``work`` and print its result as JSON (exit status 0); on ``failure`` print
    ``describe(error)`` on stderr and return ``code``."""
    try:
        result = work()
    except failure as exc:
        print(describe(exc), file=sys.stderr)
        return code
    print(json.dumps(result))
    return 0
