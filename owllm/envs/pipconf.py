"""The user's pip configuration, read the way pip reads it, and translated for uv.

uv ignores pip's configuration, so a machine whose packages come from a wheel folder or a
mirror (``find-links``, ``index-url``, ``extra-index-url``, ``constraint``) would silently
resolve against PyPI instead — on Linux that means a multi-GB CUDA torch.  We read the same
files pip reads, in pip's order (global → user → site → ``$PIP_CONFIG_FILE``; ``[global]``
then ``[install]``; ``PIP_*`` variables last) and pass the result to uv as flags.

Multiple extra indexes are searched with ``--index-strategy unsafe-best-match`` (pip's
behaviour): a local index or wheel folder can then supply the pinned version (``torch
2.13.0+cpu``) even when PyPI has the same version too.

uv treats an unreachable index as fatal (a DNS failure on ``--extra-index-url`` aborts the
install after its retries), so PyTorch's index is only added when it cannot be in the way;
see :func:`torch_index_args`.
"""

from __future__ import annotations

import configparser
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_TORCH_INDEX = "OWLLM_TORCH_INDEX"
_LIST_KEYS = ("find-links", "extra-index-url", "constraint", "trusted-host")
_KEYS = (*_LIST_KEYS, "index-url", "no-index", "cert")


@dataclass(frozen=True)
class PipSettings:
    """The package-source settings of pip's effective configuration."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    files: tuple[str, ...] = field(default=(), compare=False)

    @property
    def names_sources(self) -> bool:
        """True when the user points pip at package sources of their own."""
        return bool(self.index_url or self.extra_index_urls or self.find_links or self.no_index)

    def to_dict(self) -> dict[str, object]:
        return {"index_url": self.index_url, "extra_index_urls": list(self.extra_index_urls),
                "find_links": list(self.find_links), "constraints": list(self.constraints),
                "no_index": self.no_index, "files": list(self.files)}


def config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """pip's configuration files in override order (later wins), existing or not."""
    env = os.environ if environ is None else environ
    explicit = env.get("PIP_CONFIG_FILE")
    if explicit == os.devnull:
        return []
    home = Path(env.get("HOME") or Path.home())
    xdg_dirs = env.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in reversed(xdg_dirs.split(os.pathsep)) if d]
    files.insert(0, Path("/etc/pip.conf"))
    if os.name == "nt":
        appdata = env.get("APPDATA", "")
        files = [Path(env.get("PROGRAMDATA", "C:/ProgramData")) / "pip" / "pip.ini",
                 Path(appdata) / "pip" / "pip.ini"]
    else:
        xdg_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
        files += [home / ".pip" / "pip.conf", xdg_home / "pip" / "pip.conf"]
    site_name = "pip.ini" if os.name == "nt" else "pip.conf"
    files += [Path(prefix) / site_name for prefix in dict.fromkeys((sys.base_prefix, sys.prefix))]
    if explicit:
        files.append(Path(explicit))
    return files


def read_pip_settings(environ: Mapping[str, str] | None = None) -> PipSettings:
    """pip's effective source settings from its config files and ``PIP_*`` variables."""
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    used = []
    for path in config_files(env):
        parser = configparser.RawConfigParser()
        try:
            if not parser.read(path, encoding="utf-8"):
                continue
        except (configparser.Error, UnicodeDecodeError):
            continue  # pip would fail loudly; we just cannot use that file
        used.append(str(path))
        for section in ("global", "install"):
            if parser.has_section(section):
                for key, value in parser.items(section):
                    key = key.replace("_", "-")
                    if key in _KEYS:
                        values[key] = value
    for key in _KEYS:
        var = "PIP_" + key.upper().replace("-", "_")
        if var in env:
            values[key] = env[var]
    if "PIP_CONSTRAINTS" in env and "constraint" not in values:  # pip accepts both spellings
        values["constraint"] = env["PIP_CONSTRAINTS"]

    def many(key: str) -> tuple[str, ...]:
        return tuple(values.get(key, "").split())

    no_index = values.get("no-index", "").strip().lower() in ("1", "true", "yes", "on")
    return PipSettings(index_url=values.get("index-url") or None,
                       extra_index_urls=many("extra-index-url"), find_links=many("find-links"),
                       constraints=many("constraint"), trusted_hosts=many("trusted-host"),
                       no_index=no_index, cert=values.get("cert") or None, files=tuple(used))


def uv_source_args(pip: PipSettings, extra_index_urls: tuple[str, ...] = (),
                   find_links: tuple[str, ...] = ()) -> list[str]:
    """uv flags that reproduce pip's sources, plus a key's own (``extra_index_urls``)."""
    args: list[str] = []
    if pip.no_index:
        args.append("--no-index")
    if pip.index_url:
        args += ["--index-url", pip.index_url]
    for url in (*pip.extra_index_urls, *extra_index_urls):
        args += ["--extra-index-url", url]
    for link in (*pip.find_links, *find_links):
        args += ["--find-links", link]
    for constraint in pip.constraints:
        args += ["--constraint", constraint]
    for host in pip.trusted_hosts:
        args += ["--allow-insecure-host", host]
    if pip.extra_index_urls or extra_index_urls or pip.find_links or find_links:
        args += ["--index-strategy", "unsafe-best-match"]
    return args


def torch_index_args(url: str | None, policy: str, pip: PipSettings,
                     environ: Mapping[str, str] | None = None) -> tuple[list[str], str]:
    """Whether to add PyTorch's index, as (uv/pip flags, reason).

    ``auto``: only when pip's configuration names no package source of its own — a machine
    with its own wheel folder or mirror is never made to depend on download.pytorch.org,
    which uv would treat as fatal if unreachable.  ``$OWLLM_TORCH_INDEX`` (auto, always,
    never, or a URL to use instead) overrides the envs.yaml setting.
    """
    env = os.environ if environ is None else environ
    override = env.get(ENV_TORCH_INDEX, "").strip()
    if override and override not in ("auto", "always", "never"):
        return ["--extra-index-url", override], f"{ENV_TORCH_INDEX} names {override}"
    policy = override or policy or "auto"
    if url is None or policy == "never":
        return [], "torch index not used (policy never or no torch in the spec)"
    if policy == "auto" and pip.names_sources:
        return [], "torch index skipped: pip configuration already names package sources"
    return ["--extra-index-url", url], f"torch index {url} (policy {policy})"
