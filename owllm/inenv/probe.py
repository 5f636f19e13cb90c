"""Health probe of one environment, run by *that env's* interpreter (standard library only).

    <env>/bin/python -I owllm/inenv/__main__.py probe --key KEY --imports torch,transformers \
        [--key-packages torch,transformers] [--constraints constraints/KEY.txt]

Prints one JSON object: env_key, status (PASS/FAIL), python_path, torch_version,
cuda_available, versions (of the key packages), packages (every installed distribution),
errors (one per failed import, with its message) and drift (installed versions that differ
from the constraints file).  Exit code 0 whenever it reports, PASS or FAIL (the ``status``
field says which): under ``run_in_env`` a non-zero exit means the probe itself could not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
import traceback
from importlib import metadata


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """Every distribution in this interpreter's environment: canonical name → version."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_canonical(name), dist.version)
    return found


def read_constraints(path: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.split("#", 1)[0].strip()
            if "==" in line:
                name, _, version = line.partition("==")
                pins[_canonical(name.split("[")[0])] = version.split(";")[0].strip()
    return pins


def probe(key: str, imports: list[str], key_packages: list[str],
          constraints: str | None) -> dict[str, object]:
    errors: list[dict[str, str]] = []
    for module in imports:
        try:
            importlib.import_module(module)
        except BaseException as exc:
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            errors.append({"module": module, "error": last})
    packages = installed()
    torch_version = packages.get("torch")
    cuda_available: bool | None = None
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch_version = getattr(torch, "__version__", torch_version)
        try:
            cuda_available = bool(torch.cuda.is_available())
        except Exception as exc:
            errors.append({"module": "torch.cuda", "error": repr(exc)})
    drift: list[dict[str, str | None]] = []
    if constraints:
        try:
            pins = read_constraints(constraints)
        except OSError as exc:
            errors.append({"module": "<constraints>", "error": str(exc)})
            pins = {}
        for name, version in sorted(pins.items()):
            if packages.get(name) != version:
                drift.append({"package": name, "expected": version,
                              "installed": packages.get(name)})
        for name in sorted(set(packages) - set(pins)):
            drift.append({"package": name, "expected": None, "installed": packages[name]})
    for item in drift:
        errors.append({"module": f"<drift:{item['package']}>",
                       "error": f"installed {item['installed']}, constraints say "
                                f"{item['expected']}"})
    versions = {name: packages.get(_canonical(name)) for name in key_packages
                if _canonical(name) in packages}
    return {
        "env_key": key,
        "status": "FAIL" if errors else "PASS",
        "python_path": sys.executable,
        "python_version": sys.version.split()[0],
        "torch_version": torch_version,
        "cuda_available": cuda_available,
        "versions": versions,
        "errors": errors,
        "drift": drift,
        "packages": packages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--key", required=True)
    parser.add_argument("--imports", default="")
    parser.add_argument("--key-packages", default="")
    parser.add_argument("--constraints", default=None)
    args = parser.parse_args(argv)
    split = [m for m in args.imports.split(",") if m]
    result = probe(args.key, split, [p for p in args.key_packages.split(",") if p],
                   args.constraints)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
