"""Forced tool calls streamed while they are generated.

With ``tool_choice`` "required" or a named function the engine's constraint guarantees
OWLLM's envelope, ``{"tool": <name>, "args": {...}, "id": "call_N"}`` with its keys in that
order, one object or (``parallel_tool_calls``) an array of them.  So each call goes out as
OpenAI streams one, as the tokens arrive: a first delta with index, id, type and name (with
``arguments: ""``) once ``"args":`` begins, then the arguments' own text in pieces, the name
never repeated; a call is complete when its ``args`` value closes.  The streamed id is
generated here (the envelope's comes after the arguments).  Output the model chose freely
(``auto``) cannot be known to be a call before it ends: the app holds that back instead.

In-env module: standard library only.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

HEAD = re.compile(r'\{\s*"tool"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"args"\s*:\s*')


class CallStream:
    """Turns the text of forced calls, fed piece by piece, into ``delta.tool_calls`` lists."""

    def __init__(self) -> None:
        self.text = ""
        self.seek_from = 0  # where the next envelope may begin
        self.open = False  # inside a call's arguments
        self.sent = 0  # text[:sent] of the open arguments has gone out
        self.scanned = 0
        self.depth, self.in_string, self.escape = 0, False, False
        self.started = self.completed = 0

    @property
    def complete(self) -> bool:
        """At least one call, and every call's arguments closed."""
        return self.started > 0 and self.completed == self.started

    def feed(self, piece: str) -> list[list[dict[str, Any]]]:
        self.text += piece
        out: list[list[dict[str, Any]]] = []
        while True:
            if not self.open:
                found = HEAD.search(self.text, self.seek_from)
                if found is None:
                    return out
                out.append([{"index": self.started, "id": f"call_{uuid.uuid4().hex[:24]}",
                             "type": "function", "function": {
                                 "name": json.loads(found.group(1)), "arguments": ""}}])
                self.started += 1
                self.open, self.sent = True, found.end()
                self.scanned, self.depth, self.in_string, self.escape = found.end(), 0, \
                    False, False
            end = self._scan()
            upto = len(self.text) if end is None else end
            if upto > self.sent:
                out.append([{"index": self.started - 1,
                             "function": {"arguments": self.text[self.sent:upto]}}])
                self.sent = upto
            if end is None:
                return out
            self.completed += 1
            self.open, self.seek_from = False, end

    def _scan(self) -> int | None:
        """Where the open arguments value ends (after its closing bracket); None while open."""
        for index in range(self.scanned, len(self.text)):
            char = self.text[index]
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif char == "\\":
                    self.escape = True
                elif char == '"':
                    self.in_string = False
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    self.scanned = index + 1
                    return index + 1
        self.scanned = len(self.text)
        return None


def forced_chunks(index: int, gen: Iterator[Any], reply: Any,
                  logprobs: Callable[[list[Any]], dict[str, Any] | None]
                  ) -> Generator[str, None, int]:
    """The chunks of one choice whose output is a forced call (after its role chunk);
    returns its completion tokens.  Finish: ``tool_calls`` for complete calls, else the
    engine's (``length`` for a call cut by max_tokens: its partial arguments went out, as
    OpenAI streams them; cut before any call began, the partial text is the content)."""
    calls = CallStream()
    pending: list[Any] = []
    count, finish = 0, None
    for step in gen:
        count, finish = step.tokens, step.finish or finish
        if step.logprob is not None:
            pending.append(step.logprob)
        for deltas in calls.feed(step.text):
            yield reply.chunk(index, tool_calls=deltas)
    # Cut before any call began (a tiny max_tokens): the partial text, as the non-streamed
    # answer carries it.
    text = "" if calls.started else calls.text
    yield reply.chunk(index, text, "tool_calls" if calls.complete else (finish or "length"),
                      logprobs=logprobs(pending))
    return count
