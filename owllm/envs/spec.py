"""``envs.yaml``: what each env_key installs, and the frozen :class:`BuildSpec` of one key.

Where the file is found (:func:`find_envs_config`): ``envs.yaml`` next to the model config,
else the copy shipped in the wheel (``owllm/data/envs.yaml``), else the source checkout's
``configs/envs.yaml``.

What a backend's env installs is the backend's own knowledge
(:attr:`owllm.backends.Backend.env_packages`); a ``backends.<name>`` entry in envs.yaml
replaces it, whole, for that backend (a user pinning another torch, a mirror's index).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from owllm._yaml_lines import Key, display, dotted, load_validated, schema_message
from owllm.backends import backend_names, get_backend, is_attached
from owllm.errors import ConfigError

ENVS_FILENAME = "envs.yaml"
_HINT = "fix the file, or delete it to use OWLLM's default envs.yaml"


@cache
def envs_schema() -> dict[str, Any]:
    text = resources.files("owllm.envs").joinpath("envs.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


# A requirement is handed to uv/pip: one that starts with "-" would be read as an option
# ("--index-url=http://…" switched the index, issue 13), one with a line break would be two
# lines of a requirements file.  The schemas carry the same pattern.
_REQUIREMENT = re.compile(r"[^-\s][^\r\n]*")
_NAMES_PATTERN = "^[^-\\s][^\\r\\n]*$"  # envs.schema.json's $defs.names, the same rule


def check_requirements(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    """``values`` when each is a package spec (not an option, one line); ConfigError naming
    ``where`` otherwise.  Checked wherever a spec's package lists are assembled."""
    bad = [v for v in values if not isinstance(v, str) or not _REQUIREMENT.fullmatch(v)]
    if bad:
        raise ConfigError(where, [f"{where}: {v!r} is not a package spec (a requirement must "
                                  "not start with '-' or a space, nor span lines)" for v in bad],
                          hint="index URLs and other installer options go in envs.yaml "
                               "(extra_index_urls, find_links) or pip.conf")
    return values


def canonical_name(requirement: str) -> str:
    """The normalized distribution name of a requirement (``Foo_Bar[x]>=1`` → ``foo-bar``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    name = match.group(1) if match else requirement.strip()
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class BuildSpec:
    """Everything that decides what an env contains; its fingerprint is a hash of this."""

    key: str
    packages: tuple[str, ...]
    framework: str | None = None
    backend: str | None = None
    cuda: str = "cpu"
    features: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    no_deps: tuple[str, ...] = ()
    probe_imports: tuple[str, ...] = ()
    key_packages: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    torch_index: str | None = None
    # NAME=value pairs set while installing (source builds: CMAKE_ARGS for llama.cpp).
    build_env: tuple[str, ...] = ()
    # Distributions compiled from source whose wheels OWLLM keeps (see installer.Wheelhouse).
    keep_built_wheels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("packages", "exclude", "no_deps", "keep_built_wheels"):
            check_requirements(getattr(self, name), f"env {self.key}: {name}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BuildSpec:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


@dataclass(frozen=True)
class EnvsConfig:
    """A validated envs.yaml."""

    path: Path
    data: Mapping[str, Any]

    @property
    def cuda_tags(self) -> tuple[str, ...]:
        return tuple(self.data.get("cuda_tags", ()))

    @cached_property
    def backends(self) -> Mapping[str, Any]:
        """Every backend's env entry: the installed backends' own, replaced by the file's
        entry of the same name; a file entry for a backend that is not installed stays
        (its key still resolves and builds)."""
        overrides = dict(self.data.get("backends", {}))
        # A backend OWLLM attaches to (remote) runs nothing here: it has no env entry.
        own = {name: _backend_entry(name) for name in backend_names()
               if name not in overrides and not is_attached(name)}
        return {**own, **overrides}

    @property
    def features(self) -> Mapping[str, Any]:
        return dict(self.data.get("features", {}))

    @property
    def keys(self) -> Mapping[str, Any]:
        return dict(self.data.get("keys") or {})

    @property
    def torch_index(self) -> Mapping[str, Any]:
        return dict(self.data.get("torch_index") or {})

    def explicit_spec(self, key: str) -> BuildSpec | None:
        """The spec of a key spelled out under ``keys:``, or None."""
        entry = self.keys.get(key)
        if entry is None:
            return None
        return BuildSpec(
            key=key, packages=tuple(entry["packages"]),
            exclude=tuple(entry.get("exclude", ())), no_deps=tuple(entry.get("no_deps", ())),
            probe_imports=tuple(entry.get("probe_imports", ())),
            key_packages=tuple(entry.get("key_packages", ())),
            extra_index_urls=tuple(entry.get("extra_index_urls", ())),
            find_links=tuple(entry.get("find_links", ())),
            build_env=_env_pairs(entry.get("build_env")),
            keep_built_wheels=tuple(entry.get("keep_built_wheels", ())))

    def build_spec(self, key: str, backend: str, cuda: str, features: tuple[str, ...],
                   requirements: tuple[str, ...] = ()) -> BuildSpec:
        """The spec of a generated key: backend set + cpu/cuda variant + features + extras."""
        entry = self.backends[backend]
        variant = entry.get("cpu" if cuda == "cpu" else "cuda") or {}

        def merged(name: str) -> list[str]:
            return [*entry.get(name, ()), *variant.get(name, ())]

        packages = merged("packages")
        probe = merged("probe_imports")
        for feature in features:
            spec = self.features.get(feature)
            if spec is not None:
                packages += spec.get("packages", [])
                probe += spec.get("probe_imports", [])
        packages += list(requirements)
        torch_pin = (entry.get("torch") or {}).get(cuda)
        if torch_pin:
            packages = [torch_pin if canonical_name(p) == "torch" else p for p in packages]
        urls = [u.format(cuda=cuda) for u in merged("extra_index_urls")]
        torch_index = None
        if entry["framework"] == "torch" or any(canonical_name(p) == "torch" for p in packages):
            template = self.torch_index.get("url")
            torch_index = template.format(cuda=cuda) if template else None
        return BuildSpec(
            key=key, packages=tuple(dict.fromkeys(packages)), framework=entry["framework"],
            backend=backend, cuda=cuda, features=features,
            exclude=tuple(merged("exclude")), no_deps=tuple(merged("no_deps")),
            probe_imports=tuple(dict.fromkeys(probe)),
            key_packages=tuple(entry.get("key_packages", ())),
            extra_index_urls=tuple(urls),
            find_links=tuple(u.format(cuda=cuda) for u in merged("find_links")),
            torch_index=torch_index,
            build_env=_env_pairs(host_build_env(
                backend, cuda, {**(entry.get("build_env") or {}),
                                **(variant.get("build_env") or {})})),
            keep_built_wheels=tuple(merged("keep_built_wheels")))


def host_build_env(backend: str, cuda: str, build_env: dict[str, Any]) -> dict[str, Any]:
    """The build settings of ``backend``'s env adapted to this host by the backend's optional
    ``host_build_env(cuda, build_env)`` (llama.cpp leaves out instruction sets this CPU lists
    but cannot run); as given for a backend without one, or known only from envs.yaml."""
    if backend not in backend_names():
        return build_env
    adapt = getattr(get_backend(backend), "host_build_env", None)
    return dict(adapt(cuda, build_env)) if adapt is not None else build_env


def _backend_entry(name: str) -> Mapping[str, Any]:
    """A backend's own env entry, checked against the envs.yaml schema's backend entry (a
    third-party backend's typo is reported as clearly as the user's)."""
    backend = get_backend(name)
    entry = dict(backend.env_packages)
    schema = {"$defs": envs_schema()["$defs"], "$ref": "#/$defs/backend"}
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(entry), key=str)
    if errors:
        where = f"backend {name!r} ({type(backend).__module__}) env_packages"
        raise ConfigError(where, [f"{where}: {dotted(p) or '<top level>'}: {m}"
                                  for p, m in map(_message, errors)],
                          hint="fix the backend's env_packages, or give the backend an entry "
                               "in envs.yaml")
    return entry


def _env_pairs(mapping: Mapping[str, Any] | None) -> tuple[str, ...]:
    return tuple(f"{name}={value}" for name, value in sorted((mapping or {}).items()))


def _message(error: Any) -> tuple[Key, str]:
    """Package lists get their own message (the pattern says what, not why)."""
    if error.validator == "pattern" and error.schema.get("pattern") == _NAMES_PATTERN:
        return tuple(error.absolute_path), (
            f"{error.instance!r} is not a package spec: an entry must not start with '-' or "
            "a space, nor span lines (installer options go in extra_index_urls, find_links "
            "or pip.conf)")
    return schema_message(error)


def load_envs_config(path: str | Path) -> EnvsConfig:
    """Read and validate an envs.yaml; raise ConfigError listing every problem."""
    path = Path(path)
    data = load_validated(path, envs_schema(), "with 'version' and 'backends' (envs.yaml)",
                          _HINT, message=_message)
    shown = display(path)
    problems = []
    tags = set(data.get("cuda_tags", ()))
    for name, entry in data.get("backends", {}).items():
        for tag in (entry.get("torch") or {}):
            if tag != "cpu" and tag not in tags:
                problems.append(f"{shown}: backends.{name}.torch.{tag}: not 'cpu' and not one "
                                f"of cuda_tags ({', '.join(sorted(tags))})")
    known = {*data.get("backends", {}), *backend_names()}
    for name, entry in data.get("features", {}).items():
        for backend in entry.get("backends", ()):
            if backend not in known:
                problems.append(f"{shown}: features.{name}.backends: unknown backend "
                                f"{backend!r}")
    if problems:
        raise ConfigError(shown, problems, hint=_HINT)
    return EnvsConfig(path=path.resolve(), data=data)


def default_envs_path() -> Path:
    """The envs.yaml OWLLM ships: package data in a wheel, ``configs/`` in a checkout."""
    try:
        shipped = resources.files("owllm").joinpath("data", ENVS_FILENAME)
        if shipped.is_file():
            return Path(str(shipped))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    # A checkout: <repo>/owllm/envs/spec.py → <repo>/configs/envs.yaml.
    return Path(__file__).resolve().parents[2] / "configs" / ENVS_FILENAME


def find_envs_config(config_path: str | Path | None = None) -> Path:
    """``<config dir>/envs.yaml`` when present, else :func:`default_envs_path`."""
    if config_path is not None:
        beside = Path(config_path).resolve().parent / ENVS_FILENAME
        if beside.is_file():
            return beside
    found = default_envs_path()
    if not found.is_file():
        raise ConfigError(str(found), [f"{found}: default envs.yaml not found"],
                          hint="reinstall owllm, or put an envs.yaml next to llm_backends.yaml")
    return found
