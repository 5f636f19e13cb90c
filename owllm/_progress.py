"""Long work says what it is doing, on stderr: ``with progress.step("building env x"):``.

A terminal gets a rich spinner; a file or pipe a start line, a heartbeat line every
``$OWLLM_PROGRESS_INTERVAL_S`` s (30) and an ok/failed line with the duration.  Steps nest per
thread.  ``enabled=False`` silences a step and its nest; ``$OWLLM_PROGRESS=0|1``, the default.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from contextvars import ContextVar
from types import TracebackType

from rich.console import Console
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

ENV_PROGRESS, ENV_INTERVAL = "OWLLM_PROGRESS", "OWLLM_PROGRESS_INTERVAL_S"
_current: ContextVar[Step | None] = ContextVar("owllm_progress_step", default=None)
_write_lock = threading.Lock()  # heartbeat threads and the caller never split a line
_spinner_lock = threading.Lock()  # one live spinner per process (another thread: lines)


def default_enabled() -> bool:
    """``$OWLLM_PROGRESS`` (0/1) when set, else on except under pytest (stderr captured)."""
    value = os.environ.get(ENV_PROGRESS, "").strip().lower()
    return value not in {"0", "false", "no", "off"} if value else (
        "PYTEST_CURRENT_TEST" not in os.environ)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 60 else "{}m{:02d}s".format(*divmod(int(seconds), 60))


def _write(depth: int, message: str) -> None:
    with _write_lock, contextlib.suppress(OSError, ValueError, AttributeError):  # no stderr
        sys.stderr.write(f"owllm: {'  ' * depth}{message}\n")
        sys.stderr.flush()


class Step:
    """``with step(text):`` reports ``text`` as long work while the block runs; ``enabled=None``
    inherits from the enclosing step, else :func:`default_enabled`."""

    def __init__(self, text: str, *, enabled: bool | None = None) -> None:
        self.text, self.detail, self.started = text, "", time.monotonic()
        self.parent: Step | None = _current.get()
        shown = self.parent is not None and self.parent.enabled
        self.enabled: bool = (enabled if enabled is not None else shown if self.parent
                              else default_enabled())
        self.depth: int = self.parent.depth + 1 if self.parent is not None and shown else 0
        self.child: Step | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._console: Console | None = None  # set while this step shows on a live spinner

    def update(self, detail: str) -> None:
        """Show ``detail`` (a sub-step, an installer's latest line) with this step."""
        self.detail = detail.strip()[:120]

    def __rich__(self) -> Text:  # rendered by the spinner's own refresh thread
        outer: list[str] = []
        node = self
        while node.child is not None and node.child.enabled:
            outer, node = [*outer, node.text], node.child
        line = f"{node.text} ({_duration(time.monotonic() - node.started)})"
        line += f" | {node.detail}" if node.detail else ""
        line += f"  [in {' > '.join(outer)}]" if outer else ""
        # One line, the innermost step first: a narrow terminal cuts the context, not it.
        return Text(line, no_wrap=True, overflow="ellipsis")

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self.child is None or not self.child.enabled:  # the innermost step speaks
                _write(self.depth, f"{self.text}: still running, "
                       f"{_duration(time.monotonic() - self.started)}"
                       + (f" ({self.detail})" if self.detail else ""))

    def __enter__(self) -> Step:
        self.started, self._token = time.monotonic(), _current.set(self)
        if self.parent is not None:
            self.parent.child = self
        if not self.enabled:
            return self
        self._console = self.parent._console if self.parent is not None else None
        if self._console is None and getattr(sys.stderr, "isatty", lambda: False)():
            # The outermost shown step owns the spinner (a dumb terminal gets lines); stdout
            # is not redirected: JSON results never pass through the spinner's console.
            console = Console(stderr=True, highlight=False)
            if console.is_interactive and _spinner_lock.acquire(blocking=False):
                self._console, self._live = console, Live(
                    Spinner("dots", text=self), console=console, transient=True,
                    refresh_per_second=8, redirect_stdout=False)
                self._live.start()
        if self._console is None:
            _write(self.depth, f"{self.text} ...")
            value = os.environ.get(ENV_INTERVAL, "")
            interval = max(0.05, float(value)) if value.replace(".", "", 1).isdigit() else 30.0
            self._thread = threading.Thread(target=self._beat, args=(interval,),
                                            name="owllm-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        elapsed = _duration(time.monotonic() - self.started)
        self._stop.set()
        try:
            if self._thread is not None:
                self._thread.join(timeout=5)
            if self._live is not None:
                self._live.stop()
        finally:
            if self._live is not None:
                _spinner_lock.release()
            _current.reset(self._token)
            if self.parent is not None and self.parent.child is self:
                self.parent.child = None
        if not self.enabled:
            return
        outcome = (f"ok ({elapsed})" if exc_type is None
                   else f"interrupted after {elapsed}" if issubclass(exc_type, KeyboardInterrupt)
                   else f"failed after {elapsed} ({exc_type.__name__})")
        if self._console is None:
            _write(self.depth, f"{self.text}: {outcome}")
        else:  # above a parent's live spinner, or after this step's own
            self._console.print(Text(f"owllm: {'  ' * self.depth}{self.text}: {outcome}"))


step = Step  # the spelling at call sites: ``with progress.step("…"):``


def update(detail: str) -> None:
    """Show ``detail`` with this thread's innermost step (a no-op outside any step)."""
    current = _current.get()
    if current is not None:
        current.update(detail)
