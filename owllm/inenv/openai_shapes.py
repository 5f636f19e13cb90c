"""OpenAI response shapes of one completion request: the envelope, choices, stream chunks,
logprobs and tool-call deltas, exactly as the official ``openai`` client parses them.

Standard library only (unit-testable on the host as ``owllm.inenv.openai_shapes``); in-env
module: it never imports the host-side ``owllm``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from .engine import TokenLogprob

__all__ = ["LogprobShaper", "Reply", "call_deltas"]


def _chat_token(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}
                             for t in entry.top]}


@dataclass
class LogprobShaper:
    """Logprobs of one choice, in the chat shape (``{"content": [...]}``) or the legacy
    completions shape (``tokens`` / ``token_logprobs`` / ``top_logprobs`` / ``text_offset``).
    ``offset``: where the next token's text starts in the choice's text (after an echoed
    prompt); it grows as pieces are shaped, so streamed chunks carry running offsets."""

    chat: bool
    offset: int = 0

    def shape(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        if self.chat:
            return {"content": [_chat_token(e) for e in entries], "refusal": None}
        offsets = []
        for entry in entries:
            offsets.append(self.offset)
            self.offset += len(entry.token)
        return {"tokens": [e.token for e in entries],
                "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries],
                "text_offset": offsets}


def call_deltas(calls: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The ``delta.tool_calls`` lists that stream ``calls`` as OpenAI does: per call, first
    its index, id, type and name with empty arguments, then the arguments (index and
    arguments only: the name is never repeated)."""
    out: list[list[dict[str, Any]]] = []
    for index, call in enumerate(calls):
        function = call["function"]
        out.append([{"index": index, "id": call["id"], "type": "function",
                     "function": {"name": function["name"], "arguments": ""}}])
        out.append([{"index": index, "function": {"arguments": function["arguments"]}}])
    return out


@dataclass
class Reply:
    """The OpenAI envelope of one request: its id, object kind, and the chunks or body."""

    chat: bool
    model_id: str
    prompt_tokens: int
    rid: str = ""
    created: int = 0

    def __post_init__(self) -> None:
        self.created = int(time.time())
        self.rid = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    @property
    def kind(self) -> str:
        return "chat.completion" if self.chat else "text_completion"

    def usage(self, n: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n,
                "total_tokens": self.prompt_tokens + n}

    def _event(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": self.rid, "object": f"{self.kind}.chunk" if self.chat else self.kind,
                "created": self.created, "model": self.model_id, "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def chunk(self, index: int, text: str = "", finish: str | None = None,
              role: bool = False, tool_calls: list[dict[str, Any]] | None = None,
              logprobs: dict[str, Any] | None = None) -> str:
        """One server-sent event of a stream: a piece of choice ``index``."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text:
                delta["content"] = text
            if tool_calls:
                delta["tool_calls"] = tool_calls
            choice: dict[str, Any] = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": text}
        choice.update({"logprobs": logprobs, "finish_reason": finish})
        return self._event([choice])

    def usage_chunk(self, n: int) -> str:
        return self._event([], usage=self.usage(n))

    def choice(self, index: int, text: str, finish: str,
               calls: list[dict[str, Any]] | None = None,
               logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        """One choice of a whole (non-streamed) response; ``calls``: the tool calls the
        text parsed as (then the message carries them, and no content)."""
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": calls}
        return {"index": index, "message": message, "logprobs": logprobs,
                "finish_reason": "tool_calls" if calls else finish}

    def body(self, choices: list[dict[str, Any]], completion_tokens: int) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        return {"id": self.rid, "object": self.kind, "created": self.created,
                "model": self.model_id, "choices": choices,
                "usage": self.usage(completion_tokens)}
