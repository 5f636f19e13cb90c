"""A fourth backend from outside OWLLM, registered through the ``owllm.backends`` entry point
group only (``owllm_greedy-0.1.0.dist-info/entry_points.txt`` beside this package; put this
folder on ``sys.path``/``PYTHONPATH`` and importlib.metadata finds it).

``transformers-greedy`` serves a model with OWLLM's transformers server, launched with other
arguments: greedy decoding whatever the config says (temperature 0, top_p 1), a default system
prompt, and its own tool-call prompt template.  Its env is the transformers backend's
package set, under its own key (``torch-cpu-transformers-greedy``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from owllm.backends import (
    TOOL_CALL_RULES,
    BackendContext,
    Capabilities,
    LaunchSpec,
    option_problems,
)
from owllm.backends.transformers import TransformersBackend
from owllm.config import ModelConfig

SYSTEM_PROMPT = "You answer briefly."
MARK_VAR = "OWLLM_GREEDY_BACKEND"  # in the server's environment: the test finds it there


class GreedyTransformersBackend:
    """OWLLM's transformers server, always greedy."""

    name = "transformers-greedy"
    capabilities = Capabilities()
    quant_types: tuple[str, ...] = ()
    prompt_template = ("Greedy tool caller.\nTools:\n{tools}\n\n" + TOOL_CALL_RULES
                       + "\n\nRequest: {prompt}\n")
    env_packages: dict[str, Any] = dict(TransformersBackend.env_packages)

    def __init__(self) -> None:
        self._server = TransformersBackend()

    def config_problems(self, model: ModelConfig) -> list[tuple[str, str]]:
        problems = option_problems(model)  # no 4-bit, no adapters, no quant
        if model.generation.temperature != 0.0:
            problems.append(("generation", "backend transformers-greedy decodes greedily: "
                             "leave generation.temperature at 0"))
        return problems

    def model_path(self, model: ModelConfig, ctx: BackendContext) -> Path | str:
        return self._server.model_path(model, ctx)

    def launch(self, model: ModelConfig, model_path: Path | str, ctx: BackendContext,
               host: str, port: int) -> LaunchSpec:
        greedy = replace(model, system_prompt=model.system_prompt or SYSTEM_PROMPT,
                         generation=replace(model.generation, temperature=0.0, top_p=1.0))
        spec = self._server.launch(greedy, model_path, ctx, host, port)
        return replace(spec, env={**spec.env, MARK_VAR: self.name})
