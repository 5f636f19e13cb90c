"""Pure helpers of OWLLM's model servers: OpenAI error bodies and response envelopes, tool
calls, stops, JSON.

Standard library only, so it is unit-testable without torch (on the host it imports as
``owllm.inenv.openai_helpers``); in-env module: it never imports the host-side ``owllm``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_STOP = 4
TOOL_CHOICES = ("auto", "none", "required")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status, message, param, code, kind)


def error_body(message: str, kind: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def content_text(content: Any) -> str:
    """OpenAI message content (a string, or a list of parts) → its text; other parts and
    shapes count as no text (never a TypeError later)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content
                       if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_char_limit(max_len: int, longest_token: int) -> int:
    """A prompt with more characters than this cannot fit in ``max_len`` tokens, so it can be
    refused without tokenizing it (issue 13: a 50 MB prompt took 667 MB to tokenize).  No
    token covers more than ``longest_token`` characters; the factor 2 leaves room for
    normalizers that merge characters (NFC)."""
    return max_len * max(1, longest_token) * 2


def closer_tokens(ll_tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids that close JSON, best first: (inside a string, outside any string)."""
    inside: list[tuple[int, int, int, int]] = []
    outside: list[tuple[int, int, int, int]] = []
    for token in range(ll_tokenizer.vocab_size):
        try:
            text = ll_tokenizer.decode_bytes([token]).decode("utf-8")
        except (UnicodeDecodeError, ValueError):
            continue
        if not text or set(text) - set('"}],'):
            continue
        # ',' only continues (a required key comes next): rank it after real closers
        rank = (text.count(","), -len(text), token)
        if text.startswith('"') and '"' not in text[1:]:
            inside.append((*rank, token))
        elif '"' not in text:
            outside.append((*rank, token))
    return [t[-1] for t in sorted(inside)], [t[-1] for t in sorted(outside)]


def inside_string(text: str) -> bool:
    """Whether a JSON prefix ends inside a string (key or value)."""
    inside = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif inside and char == "\\":
            escaped = True
        elif char == '"':
            inside = not inside
    return inside


def format_schema(response_format: dict[str, Any]) -> dict[str, Any]:
    kind = response_format.get("type")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise ApiError(400, f"unsupported response_format type {kind!r}", "response_format")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise ApiError(400, "response_format.json_schema.schema must be an object",
                       "response_format")
    return schema


def tool_functions(tools: Any) -> list[dict[str, Any]]:
    """The function objects of OpenAI ``tools`` (``{"type": "function", "function": {...}}``,
    or a bare function object); any other shape is a 400, never a crash further on."""
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list of {\"type\": \"function\", \"function\": "
                            "{\"name\", \"parameters\"}} objects", "tools")
    out = []
    for index, tool in enumerate(tools):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ApiError(400, f"tools[{index}] must be {{\"type\": \"function\", \"function\": "
                                "{\"name\": <string>, \"parameters\": <JSON schema>}}",
                           f"tools[{index}]")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
            raise ApiError(400, f"tools[{index}].function.parameters must be a JSON schema "
                                "object", f"tools[{index}].function.parameters")
        out.append(fn)
    return out


TOOLS_PROMPT = ("You can call these tools. To call one, answer with only a JSON object "
                '{"tool": name, "args": {...}, "id": "call_1"} (several calls: a JSON array '
                "of such objects).\nTools: ")


def chat_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                  system_prompt: str = "") -> list[dict[str, Any]]:
    """OpenAI messages made ready for a chat template (copies; the input is not changed):
    content parts joined into text, an assistant's ``tool_calls`` also written as the JSON
    envelope a model answers with (its content, for templates that ignore ``tool_calls``),
    the tools described in a system message, the configured system prompt first when the
    request has none of its own.  A text part without a string ``text`` is a 400."""
    out = []
    for index, message in enumerate(messages):
        m = dict(message)
        if m.get("role") == "developer":  # OpenAI's newer name for the system role
            m["role"] = "system"
        if isinstance(m.get("content"), list):  # OpenAI content parts: keep the text
            if any(not isinstance(part, dict) or (part.get("type", "text") == "text" and
                   not isinstance(part.get("text"), str)) for part in m["content"]):
                raise ApiError(400, f"messages[{index}].content: a text part needs a "
                                    "string 'text'", "messages")
            m["content"] = content_text(m["content"])
        calls = m.get("tool_calls")
        if m.get("role") == "assistant" and isinstance(calls, list) and calls \
                and not m.get("content"):
            m["content"] = json.dumps(_envelopes(calls, index))
        out.append(m)
    if tools:
        out.insert(0, {"role": "system",
                       "content": TOOLS_PROMPT + json.dumps(tool_functions(tools))})
    if system_prompt and not any(m.get("role") == "system" for m in out[bool(tools):]):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


def render_chat(render: Callable[[], str]) -> str:
    """A chat template's rendering, with its failures as 400s: the template's own
    ``raise_exception(...)`` speaks to the caller ("roles must alternate") and is quoted;
    anything else is an internal detail, kept to the log."""
    from jinja2.exceptions import TemplateError  # every env that renders chats has jinja2

    try:
        return str(render())
    except TemplateError as exc:
        print(f"owllm-server: the chat template failed: {exc!r}", flush=True)
        detail = f": {str(exc)[:200]}" if type(exc) is TemplateError else ""
        raise ApiError(400, f"the model's chat template cannot render these messages"
                            f"{detail}", "messages") from exc


def _envelopes(calls: list[Any], index: int) -> Any:
    """An assistant message's OpenAI ``tool_calls`` as our call envelope(s)."""
    out = []
    for number, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ApiError(400, f"messages[{index}].tool_calls[{number}] must be {{\"id\", "
                                "\"type\": \"function\", \"function\": {\"name\", "
                                "\"arguments\"}}", "messages")
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = fn.get("arguments")
        out.append({"tool": fn["name"], "args": args, "id": str(call.get("id") or "")})
    return out[0] if len(out) == 1 else out


def tool_choice_name(choice: Any) -> str | None:
    """The function a ``tool_choice`` names (None for "auto" / "none" / "required" /
    omitted); a wrong shape (``{"function": "f"}``) is a 400."""
    if choice is None or choice in TOOL_CHOICES:
        return None
    fn = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or \
            choice.get("type", "function") != "function":
        raise ApiError(400, "tool_choice must be \"auto\", \"none\", \"required\" or "
                            "{\"type\": \"function\", \"function\": {\"name\": <string>}}",
                       "tool_choice")
    return str(fn["name"])


def tool_call_schema(tools: list[dict[str, Any]], choice: Any,
                     parallel: bool = False) -> dict[str, Any] | None:
    """tool_choice "required" or a named function → the JSON schema of one call envelope
    (``parallel``: or of a non-empty array of them, OpenAI's ``parallel_tool_calls``)."""
    wanted = tool_choice_name(choice)  # validates the shape first
    if choice != "required" and wanted is None:
        return None  # "auto" / "none" / omitted: the model decides freely
    options = []
    for fn in tool_functions(tools):
        if wanted is not None and fn.get("name") != wanted:
            continue
        options.append({"type": "object", "additionalProperties": False,
                        "required": ["tool", "args", "id"], "properties": {
                            "tool": {"const": fn.get("name")},
                            "args": fn.get("parameters") or {"type": "object"},
                            "id": {"type": "string", "pattern": "^call_[0-9]{1,3}$"}}})
    if not options:
        raise ApiError(400, f"tool_choice names no tool in tools: {wanted!r}", "tool_choice")
    one = options[0] if len(options) == 1 else {"anyOf": options}
    return {"anyOf": [one, {"type": "array", "items": one, "minItems": 1}]} if parallel else one


def first_stop(text: str, stops: list[str], seen: int = 0) -> int | None:
    """Index of the earliest stop string in ``text``, or None.  ``seen``: a prefix length
    known to hold no stop (checked at the previous token), so only the tail a new stop can
    start in is searched, ``len(stop) - 1`` characters of overlap included (issue #18: the
    server searched the whole output at every token)."""
    hits = [i for s in stops if s and (i := text.find(s, max(0, seen - len(s) + 1))) >= 0]
    return min(hits) if hits else None


_BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def byte_piece(piece: str) -> int | None:
    """The byte of a byte-fallback vocabulary entry (``<0x0A>`` → 10), else None."""
    return int(piece[3:5], 16) if _BYTE_PIECE.fullmatch(piece) else None


def byte_tokens(vocab: dict[str, int]) -> frozenset[int]:
    """The byte-fallback tokens (``<0x0A>``…) of a tokenizer's vocabulary."""
    return frozenset(i for piece, i in vocab.items() if _BYTE_PIECE.fullmatch(piece))


@dataclass
class TailDecoder:
    """Text of a growing token list, decoding only its new tail at each token.

    Re-decoding the whole output per token costs O(n) per token, O(n²) per answer.  Here each
    token decodes a small window: the tokens since the last text was produced plus the one
    before them (the detokenizer method of TGI and vLLM).  The window keeps what depends on
    the left neighbour right (SentencePiece drops a leading space only at the very start), and
    a token that ends in half a UTF-8 character (byte fallback decodes it to U+FFFD) waits in
    the window for its next byte.  ``text`` only grows; ``full_text()`` adds what still waits.
    ``hold``: tokens after which text never settles, because a decoder may still rewrite
    them: SentencePiece byte-fallback tokens (``<0x64>``) decode as one group with the byte
    tokens around them, and an invalid group turns every byte, an ASCII ``d`` included, into
    U+FFFD (see :func:`byte_tokens`).  The one thing it cannot follow is a decoder that
    rewrites text across the window's left edge (``clean_up_tokenization_spaces`` turning
    " ." into "."); Llama-family tokenizers leave that off.
    """

    decode: Callable[[list[int]], str]
    hold: frozenset[int] = frozenset()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    _prefix: int = 0  # first token of the window
    _read: int = 0  # tokens up to here are in ``text``

    def add(self, token: int) -> str:
        """Append a token; return the text it completed (may be empty while it waits)."""
        self.ids.append(token)
        head = self.decode(self.ids[self._prefix:self._read])
        window = self.decode(self.ids[self._prefix:])
        if len(window) <= len(head) or window.endswith("\ufffd") or token in self.hold:
            return ""
        delta = window[len(head):]
        self.text += delta
        self._prefix, self._read = self._read, len(self.ids)
        return delta

    def full_text(self) -> str:
        """``text`` plus what still waits (a trailing partial character decodes as U+FFFD)."""
        if self._read == len(self.ids):
            return self.text
        head = self.decode(self.ids[self._prefix:self._read])
        return self.text + self.decode(self.ids[self._prefix:])[len(head):]


def safe_prefix(text: str, stops: list[str]) -> str:
    if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
        text = text.rstrip("\ufffd")
    # The longest end that begins any stop: the first stop's match alone could let through
    # the start of another ("id" ends "...id" for stop "idaz"; stop "dazol" holds only "d").
    hold = max((k for stop in stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                if text.endswith(stop[:k])), default=0)
    return text[:len(text) - hold]


def parse_tool_calls(text: str, parallel: bool = True) -> list[dict[str, Any]] | None:
    """An output that is a tool call (our envelope or OpenAI's name/arguments), or an array of
    them → OpenAI ``tool_calls`` (ids made unique); None for anything else, and for several
    calls when ``parallel`` is False (then the output stays text)."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    if not parallel and len(items) != 1:
        return None
    calls: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            return None
        name = item.get("tool", item.get("name"))
        args = item.get("args", item.get("arguments", {}))
        if not isinstance(name, str):
            return None
        cid = str(item.get("id") or f"call_{index}")
        if any(c["id"] == cid for c in calls):
            cid = f"{cid}_{index}"
        calls.append({"id": cid, "type": "function", "function": {
            "name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return calls or None
