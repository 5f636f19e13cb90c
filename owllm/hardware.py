"""Hardware profile of this host: NVIDIA GPUs, driver and CUDA version, CPU arch and flags.

The orchestrator never imports torch: CUDA is detected through NVML (``libnvidia-ml`` via
ctypes) and, when that library is missing, through ``nvidia-smi``.  ``cuda_version`` is the
newest CUDA the *driver* supports (what a CUDA wheel needs), not a toolkit version.

``$OWLLM_HARDWARE`` replaces detection: a JSON object, or a path to a JSON/YAML file, with any
of the :class:`HardwareProfile` fields, so tests can simulate a CUDA host::

    OWLLM_HARDWARE='{"cuda_version": "12.2", "gpus": [{"name": "NVIDIA A100", "memory_mb": 40960}]}'
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from owllm.errors import ConfigError

ENV_HARDWARE = "OWLLM_HARDWARE"
# CPU flags that matter for wheels and kernels (llama.cpp builds, vLLM CPU, torch CPU kernels).
INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni",
                     "amx_bf16", "amx_tile", "fma", "f16c", "sse4_2", "neon", "asimd")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU: its name and total memory in MiB."""

    name: str
    memory_mb: int | None = None


@dataclass(frozen=True)
class HardwareProfile:
    """What env resolution needs to know about the host."""

    gpus: tuple[GpuInfo, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    arch: str = field(default_factory=platform.machine)
    cpu_flags: tuple[str, ...] = ()
    os: str = field(default_factory=lambda: platform.system().lower())
    source: str = "detected"

    @property
    def has_cuda(self) -> bool:
        """True when an NVIDIA driver reports a CUDA version (GPUs present or not listed)."""
        return self.cuda_version is not None

    def summary(self) -> str:
        """One line for explanations and logs."""
        gpus = ", ".join(g.name for g in self.gpus) or "no GPU"
        cuda = f"CUDA {self.cuda_version}" if self.cuda_version else "no CUDA"
        return f"{self.os}/{self.arch}, {cuda}, {gpus}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the same shape ``$OWLLM_HARDWARE`` accepts)."""
        return {
            "gpus": [{"name": g.name, "memory_mb": g.memory_mb} for g in self.gpus],
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
            "arch": self.arch,
            "cpu_flags": list(self.cpu_flags),
            "os": self.os,
            "source": self.source,
        }


def detect_hardware() -> HardwareProfile:
    """The host's profile, or the one ``$OWLLM_HARDWARE`` describes."""
    override = os.environ.get(ENV_HARDWARE)
    if override:
        return _from_override(override)
    gpus, driver, cuda = _nvml() or _nvidia_smi() or ((), None, None)
    return HardwareProfile(gpus=tuple(gpus), driver_version=driver, cuda_version=cuda,
                           cpu_flags=_cpu_flags())


# --- override --------------------------------------------------------------------------------

_FIELDS = {"gpus", "driver_version", "cuda_version", "arch", "cpu_flags", "os"}


def _from_override(raw: str) -> HardwareProfile:
    text, where = raw, f"${ENV_HARDWARE}"
    if not raw.lstrip().startswith("{"):
        path = Path(raw).expanduser()
        where = f"${ENV_HARDWARE} ({path})"
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise _bad(where, f"not a JSON object and not a readable file: {exc}") from exc
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as exc:
        raise _bad(where, f"invalid JSON/YAML: {exc}") from exc
    if not isinstance(data, Mapping):
        raise _bad(where, f"expected a mapping, got {type(data).__name__}")
    unknown = set(data) - _FIELDS
    if unknown:
        raise _bad(where, f"unknown key(s) {', '.join(sorted(unknown))} "
                          f"(allowed: {', '.join(sorted(_FIELDS))})")
    try:
        gpus = tuple(GpuInfo(name=str(g["name"]), memory_mb=g.get("memory_mb"))
                     if isinstance(g, Mapping) else GpuInfo(name=str(g))
                     for g in data.get("gpus") or ())
    except (KeyError, TypeError) as exc:
        raise _bad(where, "gpus: each entry needs a 'name' (and optional 'memory_mb')") from exc
    cuda = data.get("cuda_version")
    if cuda is not None:
        cuda = str(cuda)
        if not _parse_version(cuda):
            raise _bad(where, f"cuda_version: {cuda!r} is not a version like '12.2'")
    return HardwareProfile(
        gpus=gpus,
        driver_version=None if data.get("driver_version") is None
        else str(data["driver_version"]),
        cuda_version=cuda,
        arch=str(data.get("arch") or platform.machine()),
        cpu_flags=tuple(str(f) for f in data.get("cpu_flags") or ()) if "cpu_flags" in data
        else _cpu_flags(),
        os=str(data.get("os") or platform.system().lower()),
        source="override",
    )


def _bad(where: str, message: str) -> ConfigError:
    return ConfigError(ENV_HARDWARE, [f"{where}: {message}"],
                       hint=f"set {ENV_HARDWARE} to a JSON object such as "
                            '\'{"cuda_version": "12.2", "gpus": [{"name": "NVIDIA A100"}]}\' '
                            "or to a JSON/YAML file path, or unset it")


def _parse_version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(p) for p in text.strip().split("."))
    except ValueError:
        return None


# --- NVIDIA ----------------------------------------------------------------------------------


def _nvml() -> tuple[list[GpuInfo], str | None, str | None] | None:
    """Query NVML directly; None when the library is absent or fails."""
    names = ("nvml.dll",) if os.name == "nt" else ("libnvidia-ml.so.1", "libnvidia-ml.so")
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None or lib.nvmlInit_v2() != 0:
        return None
    try:
        cuda_int = ctypes.c_int()
        cuda = None
        if lib.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(cuda_int)) == 0:
            cuda = f"{cuda_int.value // 1000}.{(cuda_int.value % 1000) // 10}"
        buf = ctypes.create_string_buffer(96)
        driver = buf.value.decode() if lib.nvmlSystemGetDriverVersion(buf, 96) == 0 else None
        count = ctypes.c_uint()
        gpus: list[GpuInfo] = []
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == 0:
            for index in range(count.value):
                handle = ctypes.c_void_p()
                if lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                    continue
                name_buf = ctypes.create_string_buffer(96)
                lib.nvmlDeviceGetName(handle, name_buf, 96)

                class _Mem(ctypes.Structure):
                    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                                ("used", ctypes.c_ulonglong)]

                mem = _Mem()
                total = (mem.total // (1024 * 1024)
                         if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) == 0 else None)
                gpus.append(GpuInfo(name=name_buf.value.decode(errors="replace"),
                                    memory_mb=total))
        return gpus, driver, cuda
    finally:
        lib.nvmlShutdown()


def _nvidia_smi() -> tuple[list[GpuInfo], str | None, str | None] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        query = subprocess.run(
            [exe, "--query-gpu=name,memory.total,driver_version",
             "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
        header = subprocess.run([exe], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if query.returncode != 0:
        return None
    gpus, driver = [], None
    for line in query.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            memory = int(parts[1]) if parts[1].isdigit() else None
            gpus.append(GpuInfo(name=parts[0], memory_mb=memory))
            driver = parts[2]
    cuda = None
    for token in header.stdout.split("CUDA Version:")[1:2]:
        cuda = token.split()[0].strip("|") or None
    return gpus, driver, cuda


# --- CPU -------------------------------------------------------------------------------------


def _cpu_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present = set(value.split())
            return tuple(f for f in INTERESTING_FLAGS if f in present)
    return ()
