"""env_key resolution: hardware profile + model needs → ``<framework>-<cuda>-<backend>-<features>``.

Rules, in order (each :class:`Resolution` says which applied):

* ``env_key:`` in the model overrides the name (its spec is the ``keys:`` entry of that name
  in envs.yaml when there is one, else the model's own needs);
* cuda tag: ``device: cpu`` forces ``cpu``; otherwise the newest ``cuda_tags`` entry not newer
  than the CUDA version the driver supports; ``device: cuda`` without one is an error;
* features: ``use_4bit`` → ``bnb``, ``adapter_dir`` → ``peft`` (only for backends a feature
  lists), extra ``requirements:`` → ``req<hash>`` — sorted, joined with ``-``;
* the backend is left out of the key when it names the framework too (``vllm-cu121``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any

from owllm.config import ModelConfig
from owllm.envs.spec import BuildSpec, EnvsConfig
from owllm.errors import EnvError, UsageError
from owllm.hardware import HardwareProfile


@dataclass(frozen=True)
class Resolution:
    """A resolved key, its spec, and why."""

    key: str
    spec: BuildSpec
    model_id: str | None
    profile: str
    needs: dict[str, Any] = field(default_factory=dict)
    rules: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "env_key": self.key, "profile": self.profile,
                "needs": self.needs, "rules": list(self.rules),
                "packages": list(self.spec.packages)}


def tag_version(tag: str) -> tuple[int, int]:
    """``cu121`` → (12, 1)."""
    digits = tag[2:]
    return int(digits[:-1]), int(digits[-1])


def cuda_tag(cuda_version: str | None, tags: tuple[str, ...]) -> str | None:
    """The newest supported tag not newer than ``cuda_version``; None when none fits."""
    if not cuda_version:
        return None
    parts = [int(p) for p in cuda_version.split(".")[:2]] + [0]
    detected = (parts[0], parts[1])
    fitting = [t for t in tags if tag_version(t) <= detected]
    return max(fitting, key=tag_version) if fitting else None


def requirements_feature(requirements: tuple[str, ...]) -> str | None:
    """A short stable feature name for a model's extra requirements (``req3f2a1c``)."""
    cleaned = sorted({" ".join(r.split()) for r in requirements if r.strip()})
    if not cleaned:
        return None
    return "req" + hashlib.sha256("\n".join(cleaned).encode()).hexdigest()[:6]


def compose_key(framework: str, cuda: str, backend: str, features: tuple[str, ...]) -> str:
    parts = [framework, cuda] + ([] if backend == framework else [backend]) + list(features)
    return "-".join(parts)


def _cuda_for(model: ModelConfig, profile: HardwareProfile, envs: EnvsConfig,
              rules: list[str]) -> str:
    device = (model.device or "auto").lower()
    tag = cuda_tag(profile.cuda_version, envs.cuda_tags)
    if device == "cpu":
        rules.append("device: cpu forces the cpu build")
        return "cpu"
    if device.startswith("cuda"):
        if not profile.has_cuda:
            raise EnvError(f"model {model.model_id!r} sets device: {model.device} but this host "
                           f"has no CUDA driver ({profile.summary()})",
                           hint="set device: cpu or auto, or set OWLLM_HARDWARE to simulate")
        if tag is None:
            raise EnvError(f"CUDA {profile.cuda_version} is older than every supported wheel "
                           f"tag ({', '.join(envs.cuda_tags)})",
                           hint="update the NVIDIA driver or add a tag to envs.yaml cuda_tags")
    if tag is None:
        rules.append("no usable CUDA driver: cpu build" if not profile.has_cuda else
                     f"CUDA {profile.cuda_version} older than every supported tag: cpu build")
        return "cpu"
    rules.append(f"CUDA {profile.cuda_version} → {tag} (newest of "
                 f"{', '.join(envs.cuda_tags)} not newer than the driver)")
    return tag


def resolve_env_key(model: ModelConfig, profile: HardwareProfile,
                    envs_config: EnvsConfig) -> Resolution:
    """Resolve the env_key (and what it installs) for one model on one host."""
    rules: list[str] = []
    backend = model.backend
    if backend not in envs_config.backends:
        raise EnvError(f"model {model.model_id!r}: backend {backend!r} is not installed and "
                       f"has no entry in {envs_config.path}",
                       hint=f"known backends: {', '.join(sorted(envs_config.backends))}")
    cuda = _cuda_for(model, profile, envs_config, rules)
    wanted = {"bnb": model.use_4bit, "peft": bool(model.adapter_dir)}
    features = []
    for name, on in wanted.items():
        entry = envs_config.features.get(name)
        if not on:
            continue
        if entry is None:
            rules.append(f"feature {name} is not defined in {envs_config.path.name}: left out")
            continue
        if entry.get("backends") and backend not in entry["backends"]:
            rules.append(f"feature {name} does not apply to backend {backend}: left out")
            continue
        features.append(name)
    req = requirements_feature(model.requirements)
    if req:
        features.append(req)
        rules.append(f"extra requirements → feature {req}")
    features.sort()
    framework = envs_config.backends[backend]["framework"]
    key = compose_key(framework, cuda, backend, tuple(features))
    spec = envs_config.build_spec(key, backend, cuda, tuple(features), model.requirements)
    if model.env_key:
        rules.append(f"env_key: {model.env_key} set in the model overrides {key}")
        key = model.env_key
        spec = envs_config.explicit_spec(key) or replace(spec, key=key)
    needs = {"backend": backend, "device": model.device, "use_4bit": model.use_4bit,
             "adapter_dir": model.adapter_dir, "requirements": list(model.requirements),
             "features": features}
    return Resolution(key=key, spec=spec, model_id=model.model_id, profile=profile.summary(),
                      needs=needs, rules=tuple(rules))


def parse_key(key: str, envs_config: EnvsConfig) -> BuildSpec | None:
    """The spec of a generated key read back from its name; None when it is not one
    (unknown framework/tag/feature, or a ``req<hash>`` feature whose requirements only the
    model knows)."""
    parts = key.split("-")
    if len(parts) < 2:
        return None
    framework, cuda, rest = parts[0], parts[1], parts[2:]
    if cuda != "cpu" and cuda not in envs_config.cuda_tags:
        return None
    backends = envs_config.backends
    backend = None
    # A backend name may hold '-' itself (a third party's "torch-fast"): the
    # longest name that fits wins, so "torch-cpu-torch-fast" is that backend's key,
    # not a backend "torch" with a feature "fast".
    for size in range(len(rest), 0, -1):
        name = "-".join(rest[:size])
        if name in backends and backends[name]["framework"] == framework and name != framework:
            backend, rest = name, rest[size:]
            break
    if backend is None and framework in backends and \
            backends[framework]["framework"] == framework:
        backend = framework
    if backend is None or any(f not in envs_config.features for f in rest):
        return None
    if rest != sorted(rest) or compose_key(framework, cuda, backend, tuple(rest)) != key:
        return None
    return envs_config.build_spec(key, backend, cuda, tuple(rest))


def spec_for_key(key: str, envs_config: EnvsConfig,
                 resolutions: dict[str, Resolution] | None = None) -> BuildSpec:
    """What ``key`` installs: a ``keys:`` entry, a configured model's key, or a generated
    key's name read back; otherwise a UsageError listing the known keys."""
    explicit = envs_config.explicit_spec(key)
    if explicit is not None:
        return explicit
    if resolutions and key in resolutions:
        return resolutions[key].spec
    parsed = parse_key(key, envs_config)
    if parsed is not None:
        return parsed
    known = sorted({*envs_config.keys, *(resolutions or {})})
    raise UsageError(f"unknown env key {key!r}",
                     hint="known keys: " + (", ".join(known) or "(none configured)")
                     + "; or a generated key such as torch-cpu-transformers, vllm-cu121")
