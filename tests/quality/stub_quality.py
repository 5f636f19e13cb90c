"""An OpenAI-compatible stub with known skills, for the quality gates' own tests: real HTTP
on 127.0.0.1 (the conformance suite's :class:`StubOpenAI`, in a thread), deterministic rates.

* Chat requests whose prompt holds a built-in case's prompt are answered with that case's
  expected call (or prose for an irrelevance case) when the case's category is among
  ``skills``, and with prose otherwise: a stub with ``skills={"simple", "multiple"}`` scores
  exactly the simple and multiple cases of any selection.
* Greedy completions depend on ``seed``: two stubs with different seeds diverge at token 0,
  the same seed agrees everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from owllm.quality import load_cases
from tests.conformance.stub_openai import StubOpenAI, _Handler

PROSE = "I would rather answer in words than call a tool."
NO_TOOL = "None of these tools applies, so I answer directly."


class QualityStub(StubOpenAI):
    """``QualityStub(model, seed=1, skills={"simple"})`` as a context manager."""

    def __init__(self, model: str = "stub-tools", *, seed: int = 0,
                 skills: Iterable[str] = ("simple", "multiple")) -> None:
        super().__init__(model)
        self.seed = seed
        self.skills = set(skills)
        self.cases = load_cases("builtin")
        stub = self

        class Handler(_QualityHandler):
            server_stub = stub

        self.httpd.RequestHandlerClass = Handler

    def answer(self, content: str) -> str | None:
        """The reply to a tool prompt, or None when ``content`` holds no built-in case."""
        found = [c for c in self.cases if c.prompt in content]
        if not found:
            return None
        case = max(found, key=lambda c: len(c.prompt))  # the most specific match
        if case.category not in self.skills:  # prose where a call is due, else a call
            return json.dumps({"tool": case.tool_names[0], "args": {}, "id": "call_0"}) \
                if not case.expected else PROSE
        if not case.expected:
            return NO_TOOL
        calls = [{"tool": c.tool, "args": c.args, "id": f"call_{i}"}
                 for i, c in enumerate(case.expected)]
        return json.dumps(calls[0] if len(calls) == 1 else calls)


class _QualityHandler(_Handler):
    server_stub: QualityStub

    def _answer(self, body: dict[str, Any]) -> None:
        stub = self.server_stub
        messages = body.get("messages") or []
        content = str((messages[-1] or {}).get("content") or "") if messages else ""
        reply = stub.answer(content) if content and not body.get("stream") else None
        if reply is not None:
            return self._send(200, {
                "id": "chat-stub", "object": "chat.completion", "created": 0,
                "model": stub.model, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": reply},
                    "finish_reason": "stop", "logprobs": None}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 20,
                          "total_tokens": 70}})
        if isinstance(body.get("prompt"), str) and stub.seed:
            body = {**body, "prompt": f"<seed {stub.seed}> {body['prompt']}"}
        return super()._answer(body)
