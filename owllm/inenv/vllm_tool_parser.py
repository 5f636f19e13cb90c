"""OWLLM's tool parser for vLLM: OWLLM's strict call envelope ``{"tool", "args", "id"}`` (or a
JSON array of them) → OpenAI ``tool_calls``, streamed as OpenAI deltas (id, type and name
once, then ``arguments`` in pieces).

Loaded by vLLM itself (``--tool-parser-plugin FILE --tool-call-parser owllm
--enable-auto-tool-choice``) from a copy in the run folder, so it is one file with no
relative imports; it never imports host-side ``owllm``.  The envelope scanner at the top is
plain Python (OWLLM's unit tests import it without vLLM); the parser class is defined only
where vLLM is importable.

What it decides (``tool_choice: auto``; vLLM itself answers ``required`` and named choices
through structured output once a parser is set, and ``none`` never reaches a parser):

* the first non-blank character decides: ``{`` or ``[`` may be a call, anything else is text;
* a call is an object with only the keys ``tool`` (a tool of the request), ``args`` (an
  object) and optionally ``id``; a JSON value that turns out not to be one (another key, an
  unknown tool, a non-object item) is text, all of it, from its first character;
* ``arguments`` is the model's own JSON text of ``args``, in the stream and in the whole
  answer alike, so joined deltas equal the non-streamed call;
* a whole (non-streamed) answer holds calls only when the JSON value is complete: an answer
  cut by ``max_tokens`` is text, and vLLM then reports ``length``, never ``tool_calls``.
  A stream cannot take back pieces it sent: a call cut mid-way ends with ``length``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

PARSER_NAME = "owllm"
ENVELOPE_KEYS = frozenset({"tool", "args", "id"})


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class Envelope:
    """One call being scanned: raw slices of its fields and what was sent of it."""

    def __init__(self) -> None:
        self.key: str | None = None  # the field whose value is being read
        self.value_start: int | None = None
        self.fields: dict[str, tuple[int, int | None]] = {}  # key -> (start, end)
        self.name: str | None = None
        self.call_id: str | None = None
        self.name_sent = False
        self.args_sent = 0  # characters of the raw args already sent
        self.complete = False


class EnvelopeScanner:
    """Incremental scanner of an answer that may be OWLLM call envelopes.

    ``feed(delta)`` returns ``(content, calls)``: text to pass on as content and call deltas
    (dicts with ``index`` and any of ``id``, ``name``, ``arguments``).  The scan keeps a stack
    of open brackets and string state, and reads the envelope level's keys and the raw
    extent of their values; nested values (the args) are only bracket-matched."""

    def __init__(self, tool_names: set[str] | frozenset[str]) -> None:
        self.tool_names = frozenset(tool_names)
        self.text = ""
        self.mode = "wait"  # wait | tools | content | done
        self.pos = 0
        self.stack: list[str] = []
        self.in_string = False
        self.escape = False
        self.string_start = 0
        self.level = 1  # the depth of an envelope's fields (2 inside a top-level array)
        self.expect = "key"  # key | colon | value | end  (at the envelope level)
        self.item_next = False  # in a top-level array: an envelope may start here
        self.envelopes: list[Envelope] = []
        self.end = 0  # where a complete top-level value ends

    # -- scanning --------------------------------------------------------------------------

    def _fail(self) -> None:
        """Not a call: everything becomes text (what was sent as a call stays sent)."""
        self.mode = "content"

    def _value_done(self, env: Envelope, end: int) -> bool:
        """Record the value that ends at ``end``; False when it breaks the envelope rules."""
        key, start = env.key, env.value_start
        if key is None or start is None:
            return False
        env.fields[key] = (start, end)
        raw = self.text[start:end].strip()
        try:
            value = json.loads(raw)
        except ValueError:
            return False
        if key == "tool":
            if not isinstance(value, str) or value not in self.tool_names:
                return False
            env.name = value
        elif key == "id":
            if not isinstance(value, str):
                return False
            env.call_id = value
        elif key == "args" and not isinstance(value, dict):
            return False
        env.key, env.value_start, self.expect = None, None, "end"
        return True

    def _close_envelope(self, env: Envelope) -> bool:
        if env.name is None or "args" not in env.fields:
            return False
        env.complete = True
        return True

    def _step(self, i: int, ch: str) -> bool:  # long: one JSON state machine, kept whole
        """Advance over one character outside a string; False when this is not a call."""
        depth = len(self.stack)
        env = self.envelopes[-1] if self.envelopes else None
        if ch in " \t\r\n":
            return True
        if depth == 0:
            if self.end:
                return True  # trailing text after a complete value: handled in feed()
            if ch == "[":
                self.level, self.item_next = 2, True
                self.stack.append("[")
                return True
            if ch == "{":
                self.stack.append("{")
                self.envelopes.append(Envelope())
                self.expect = "key"
                return True
            return False
        if self.level == 2 and depth == 1:  # between envelopes of a top-level array
            if ch == "{" and self.item_next:
                self.stack.append("{")
                self.envelopes.append(Envelope())
                self.expect, self.item_next = "key", False
                return True
            if ch in ",]" and not self.item_next and self.envelopes:
                if ch == ",":
                    self.item_next = True
                else:
                    self.stack.pop()
                    self.end = i + 1
                return True
            return False
        assert env is not None
        if depth == self.level:  # an envelope's own fields
            if self.expect == "key":
                if ch == '"':
                    self.in_string, self.string_start = True, i
                    return True
                return False
            if self.expect == "colon":
                if ch != ":":
                    return False
                self.expect = "value"
                return True
            if self.expect == "value" and env.value_start is None:
                env.value_start = i
                if ch == '"':
                    self.in_string, self.string_start = True, i
                elif ch in "{[":
                    self.stack.append(ch)
                return True
            if ch in ",}":
                if self.expect == "value" and not self._value_done(env, i):
                    return False
                if ch == ",":
                    self.expect = "key"
                    return True
                self.stack.pop()
                if not self._close_envelope(env):
                    return False
                if not self.stack:
                    self.end = i + 1
                return True
            return self.expect == "value"  # a literal's characters (true, 12.5)
        # Inside a nested value (args): match brackets only.
        if ch == '"':
            self.in_string, self.string_start = True, i
        elif ch in "{[":
            self.stack.append(ch)
        elif ch in "}]":
            if {"}": "{", "]": "["}[ch] != self.stack[-1]:
                return False
            self.stack.pop()
        return True

    def _string_end(self, i: int) -> bool:
        """A string closed at ``i``: a key at the envelope level, else part of a value."""
        self.in_string = False
        if len(self.stack) != self.level or not self.envelopes:
            return True
        env = self.envelopes[-1]
        if self.expect == "key":
            try:
                key = json.loads(self.text[self.string_start:i + 1])
            except ValueError:
                return False
            if key not in ENVELOPE_KEYS or key in env.fields:
                return False
            env.key, self.expect = key, "colon"
        return True

    def _scan(self) -> bool:
        text = self.text
        while self.pos < len(text):
            i, ch = self.pos, text[self.pos]
            self.pos += 1
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"' and not self._string_end(i):
                    return False
                continue
            if self.end and not self.stack:
                return True  # stop at the value's end: the rest is content
            if not self._step(i, ch):
                return False
        return True

    # -- output ----------------------------------------------------------------------------

    def _args_so_far(self, env: Envelope) -> str:
        """The raw args text read so far; trailing blanks wait (inside a string the next
        characters send them, after the value they are not part of it)."""
        start, end = env.fields.get("args", (None, None))
        if start is None and env.key == "args" and env.value_start is not None:
            start = env.value_start
        if start is None or self.text[start] != "{":
            return ""
        return self.text[start:end if end is not None else self.pos].rstrip()

    def feed(self, delta: str) -> tuple[str, list[dict[str, Any]]]:
        """Scan ``delta``; return the content to send and the call deltas to send."""
        before = len(self.text)
        self.text += delta
        if self.mode == "content":
            return delta, []
        if self.mode == "wait":
            stripped = self.text.lstrip()
            if not stripped:
                return "", []
            if stripped[0] not in "{[":
                self.mode = "content"
                return self.text, []
            self.mode = "tools"
        if self.mode == "done":
            return delta, []
        sent_any = any(e.name_sent for e in self.envelopes)
        if not self._scan():
            self._fail()
            # Nothing sent as a call yet: all of the text is content.  Else only the rest.
            return (self.text if not sent_any else self.text[before:]), []
        calls = self._call_deltas()
        content = ""
        if self.end and not self.stack:
            self.mode = "done"
            content = self.text[self.end:] if self.text[self.end:].strip() else ""
        return content, calls

    def _call_deltas(self) -> list[dict[str, Any]]:
        out = []
        for index, env in enumerate(self.envelopes):
            args = self._args_so_far(env)
            if env.name is None or not args:  # a call starts with its name and "{" of args
                continue
            item: dict[str, Any] = {"index": index}
            if not env.name_sent:
                env.name_sent = True
                taken = {e.call_id for e in self.envelopes[:index]}
                if not env.call_id or env.call_id in taken:
                    env.call_id = new_call_id()
                item.update(id=env.call_id, name=env.name)
            if len(args) > env.args_sent:
                item["arguments"] = args[env.args_sent:]
                env.args_sent = len(args)
            if len(item) > 1:
                out.append(item)
        return out

    def whole(self) -> tuple[list[dict[str, Any]], str | None] | None:
        """The calls of a finished answer (``id``, ``name``, ``arguments``) and the text
        after them, or None when the answer is not (complete) calls."""
        if self.mode == "wait":
            self.feed("")
        if self.mode not in ("tools", "done") or not self.end:
            return None
        try:
            json.loads(self.text[:self.end])
        except ValueError:
            return None
        calls, seen = [], set()
        for env in self.envelopes:  # ids answer tool messages: unique within the answer
            call_id = env.call_id if env.call_id and env.call_id not in seen else new_call_id()
            seen.add(call_id)
            calls.append({"id": call_id, "name": env.name, "arguments": self._args_so_far(env)})
        rest = self.text[self.end:]
        return calls, (rest if rest.strip() else None)


def scan_whole(text: str, tool_names: set[str] | frozenset[str]) -> tuple[
        list[dict[str, Any]], str | None] | None:
    """:meth:`EnvelopeScanner.whole` of a complete answer."""
    scanner = EnvelopeScanner(tool_names)
    scanner.feed(text)
    return scanner.whole()


def request_tool_names(request: Any) -> frozenset[str]:
    names = set()
    for tool in getattr(request, "tools", None) or []:
        function = getattr(tool, "function", None)
        name = getattr(function, "name", None)
        if isinstance(name, str):
            names.add(name)
    return frozenset(names)


try:
    from vllm.entrypoints.generate.base.protocol import (
        DeltaFunctionCall,
        DeltaMessage,
        DeltaToolCall,
        ExtractedToolCallInformation,
        FunctionCall,
        ToolCall,
    )
    from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
except ImportError:  # outside vLLM (OWLLM's unit tests of the scanner)
    ToolParser = None


if ToolParser is not None:

    class OwllmToolParser(ToolParser):
        """``--tool-call-parser owllm``: see the module docstring.  vLLM makes one instance
        per request (per choice), so the stream's scanner lives on the instance."""

        def __init__(self, tokenizer: Any, tools: Any = None) -> None:
            super().__init__(tokenizer, tools)
            self._scanner: EnvelopeScanner | None = None

        def extract_tool_calls(self, model_output: str, request: Any) -> Any:
            names = request_tool_names(request)
            found = scan_whole(model_output, names) if names else None
            if not found:
                return ExtractedToolCallInformation(tools_called=False, tool_calls=[],
                                                    content=model_output)
            calls, rest = found
            return ExtractedToolCallInformation(
                tools_called=True, content=rest,
                tool_calls=[ToolCall(id=c["id"], function=FunctionCall(
                    id=c["id"], name=c["name"], arguments=c["arguments"])) for c in calls])

        def extract_tool_calls_streaming(self, previous_text: str, current_text: str,
                                         delta_text: str, previous_token_ids: Any,
                                         current_token_ids: Any, delta_token_ids: Any,
                                         request: Any) -> Any:
            names = request_tool_names(request)
            if not names:  # every chat passes through here once a parser is set
                return DeltaMessage(content=delta_text) if delta_text else None
            if self._scanner is None:
                self._scanner = EnvelopeScanner(names)
            content, calls = self._scanner.feed(delta_text)
            if not content and not calls:
                return None
            deltas = []
            for c in calls:  # only the fields this delta carries: "name once"
                first = "id" in c
                function = (DeltaFunctionCall(name=c["name"], arguments=c.get("arguments", ""))
                            if first else DeltaFunctionCall(arguments=c["arguments"]))
                deltas.append(DeltaToolCall(index=c["index"], function=function,
                                            **({"id": c["id"], "type": "function"}
                                               if first else {})))
            return DeltaMessage(content=content or None, tool_calls=deltas)

    ToolParserManager.register_module(name=PARSER_NAME, module=OwllmToolParser)
