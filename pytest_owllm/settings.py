"""Plugin settings: each is a command-line option and an ini key with one help string,
resolved once into a frozen dataclass (the pytest-postgresql pattern)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

# (option name, ini name, kind, help)
OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--owllm-config", "owllm_config", "string",
     "OWLLM model config (default: configs/llm_backends.yaml under the rootdir)"),
    ("--owllm-model", "owllm_models", "linelist",
     "only these model ids (repeatable; default: every model in the config)"),
    ("--owllm-home", "owllm_home", "string",
     "OWLLM home for envs, state and logs (default: $OWLLM_HOME, else the config's folder)"),
    ("--owllm-keep-servers", "owllm_keep_servers", "bool",
     "leave the model servers started by this run running afterwards"),
    ("--owllm", "owllm_suites", "bool",
     "run OWLLM's built-in env, model, tools and fuzz suites against the selected models, "
     "next to the collected tests (implied by --owllm-model; ini 'owllm_suites = false' "
     "turns that off)"),
    ("--owllm-conformance", "owllm_conformance", "bool",
     "add the OpenAI conformance suite (marker owllm_conformance) to the built-in suites; "
     "the option implies --owllm, the ini key does not; '-m owllm_conformance' runs it "
     "alone"),
    ("--owllm-conformance-strict", "owllm_conformance_strict", "bool",
     "a conformance check the endpoint refuses with a 400 naming the parameter fails "
     "instead of skipping as unsupported (to require the full API)"),
    # No percent sign in a help string: argparse %-formats option help (--help crashed).
    ("--owllm-report", "owllm_report", "string",
     "write the quality gates' summary (per model: pass rates with their Wilson intervals, "
     "latency, parity) to this Markdown file at the end of the run, e.g. for "
     "$GITHUB_STEP_SUMMARY"),
)


@dataclass(frozen=True)
class OwllmSettings:
    config_path: Path
    models: tuple[str, ...]
    home: Path | None
    keep_servers: bool
    suites: bool = False  # whether the built-in suites join the collection
    conformance: bool = False  # whether the conformance suite joins them
    conformance_strict: bool = False  # unsupported (a 400 naming the parameter) fails
    report: Path | None = None  # the quality gates' Markdown summary


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("owllm", "OWLLM model checks")
    for option, ini, kind, help_text in OPTIONS:
        if kind == "bool":
            group.addoption(option, action="store_true", default=None, dest=ini, help=help_text)
        elif kind == "linelist":
            group.addoption(option, action="append", default=None, dest=ini, metavar="ID",
                            help=help_text)
        else:
            group.addoption(option, default=None, dest=ini, metavar="PATH", help=help_text)
        parser.addini(ini, help=help_text, type=kind, default=None)  # type: ignore[arg-type]


def _get(config: pytest.Config, name: str) -> object:
    value = config.getoption(name)
    return value if value is not None else config.getini(name)


def resolve(config: pytest.Config) -> OwllmSettings:
    raw_config = _get(config, "owllm_config")
    config_path = Path(str(raw_config)) if raw_config else (
        config.rootpath / "configs" / "llm_backends.yaml")
    if not config_path.is_absolute():
        config_path = (config.invocation_params.dir / config_path).resolve()
    home = _get(config, "owllm_home")
    models: tuple[str, ...] = tuple(_get(config, "owllm_models") or ())  # type: ignore[arg-type]
    report = _get(config, "owllm_report")
    return OwllmSettings(
        config_path=config_path,
        models=models,
        home=Path(str(home)).resolve() if home else None,
        keep_servers=bool(_get(config, "owllm_keep_servers")),
        suites=_wants_suites(config),
        conformance=bool(_get(config, "owllm_conformance")),
        conformance_strict=bool(_get(config, "owllm_conformance_strict")),
        report=(config.invocation_params.dir / str(report)).resolve() if report else None,
    )


def _wants_suites(config: pytest.Config) -> bool:
    """``--owllm``, else the ini key when set, else whether ``--owllm-model`` was given.

    Only the command-line ``--owllm-model`` implies the suites: an ini ``owllm_models`` is a
    project's default selection for its own tests and must not pull the suites into every
    run.  An explicit ``owllm_suites = false`` wins over that implication.
    """
    if config.getoption("owllm_suites") or config.getoption("owllm_conformance"):
        return True
    ini = config.getini("owllm_suites")
    if ini is not None:
        return bool(ini)
    return bool(config.getoption("owllm_models"))
