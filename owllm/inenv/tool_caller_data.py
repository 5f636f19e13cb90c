"""Synthetic training data for ``demo://tiny-tool-caller``: requests over the built-in tools,
rendered in the exact tool prompts OWLLM's backends send, with the call each one is due.

In-env module: it cannot import the host-side ``owllm``, so the backends' prompt templates
and the built-in tools' specs are copied here; ``tests/quality/test_tool_caller.py`` pins
every copy to its source (``Backend.prompt_template``, ``render_tools(builtin_tools())``),
so a changed template or tool fails a test instead of silently training on stale prompts.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

RULES = (
    'Reply with exactly one JSON object and nothing else: {{"tool": "<tool name>", '
    '"args": {{<arguments>}}, "id": "call_1"}}. No markdown, no code fences, no prose, '
    "no XML, no function-call syntax. Use only the tools listed and only their parameters."
)

#: Backend name -> its ``prompt_template`` (fields ``{tools}`` and ``{prompt}``).
TEMPLATES: dict[str, str] = {
    "transformers": ("You can call tools. Available tools:\n{tools}\n\n" + RULES
                     + "\n\nUser request: {prompt}\n"),
    "vllm": ("You are a function-calling assistant.\n# Tools\n{tools}\n\n# Output format\n"
             + RULES + " For several independent calls, reply with a JSON array of such "
             "objects with distinct ids.\n\n# Request\n{prompt}\n"),
    "llamacpp": "Tools:\n{tools}\n" + RULES + "\nRequest: {prompt}\nJSON:",
    "remote": "Tools:\n{tools}\n" + RULES + "\nRequest: {prompt}",
}

#: The built-in tools as ``owllm tools`` serves them: name -> (description, parameters).
TOOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "calculator": ("Evaluate an arithmetic expression and return the number.", {
        "type": "object",
        "properties": {"expression": {
            "type": "string", "minLength": 1, "maxLength": 512,
            "description": "arithmetic over numbers with + - * / // % ** and parentheses, "
                           "e.g. '42 * 17'"}},
        "required": ["expression"], "additionalProperties": False}),
    "echo": ("Return the given text unchanged.", {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 10_000,
                                "description": "the text to return"}},
        "required": ["text"], "additionalProperties": False}),
    "current_time": ("The current date and time (ISO 8601) in UTC or an IANA time zone.", {
        "type": "object",
        "properties": {"timezone": {
            "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_+/-]+$",
            "description": "an IANA time zone such as 'Europe/Paris'; default UTC"}},
        "additionalProperties": False}),
}

#: What the model answers when no offered tool fits (any prose passes "no call").
REFUSAL = "None of the listed tools can do that."


def render_tool(name: str) -> str:
    """One tool as ``owllm.tools.prompts.render_tools`` renders it."""
    description, params = TOOLS[name]
    schema = json.dumps(params, separators=(",", ":"), sort_keys=True)
    return f"- {name}: {description}\n  args schema: {schema}"


def render_prompt(backend: str, tools: list[str], request: str) -> str:
    """The user message a client sends for ``request`` with ``tools`` offered."""
    rendered = "\n".join(render_tool(name) for name in tools)
    return TEMPLATES[backend].format(tools=rendered, prompt=request)


def answer_text(calls: list[tuple[str, dict[str, Any]]] | None) -> str:
    """The reply due: one envelope, an array of them, or the refusal."""
    if not calls:
        return REFUSAL
    envelopes = [{"tool": tool, "args": args, "id": f"call_{i}"}
                 for i, (tool, args) in enumerate(calls, 1)]
    return json.dumps(envelopes[0] if len(envelopes) == 1 else envelopes)


# -- requests -----------------------------------------------------------------------------------

CALC_PHRASES = ("What is {e}?", "Compute {e}.", "Calculate {e}", "How much is {e}?",
                "Evaluate {e} for me.", "Please work out {e}.", "{e} = ?",
                "Use the calculator: {e}", "What does {e} come to?", "Solve {e}")
ECHO_PHRASES = ("Repeat exactly: {t}", "Echo back '{t}'", "Say back this text: {t}",
                "Echo: {t}", "Please echo \"{t}\"", "Return this text unchanged: {t}")
TIME_PHRASES = ("What time is it in {z}?", "Current time in {z}, please.",
                "What is the date and time in {z}?", "Tell me the time in {z}.",
                "What's the time in {z} right now?")
TIME_PLAIN = ("What time is it?", "What is the current time?", "Tell me the time.",
              "What's the date and time now?")
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Europe/London",
         "Australia/Sydney", "America/Los_Angeles", "Africa/Cairo", "Asia/Kolkata",
         "Europe/Berlin", "America/Sao_Paulo", "Asia/Singapore", "Europe/Madrid",
         "America/Chicago", "Asia/Dubai", "Pacific/Auckland", "Europe/Rome", "Asia/Seoul",
         "America/Toronto", "Europe/Moscow", "Africa/Lagos", "Asia/Shanghai")
WORDS = ("hello", "world", "blue", "river", "quiet", "morning", "seven", "apples", "owl",
         "stone", "light", "green", "paper", "moon", "fast", "bridge", "cloud", "tea",
         "north", "song", "table", "red", "silver", "garden", "window", "happy", "code")
#: Requests no built-in tool serves.  None of them is a built-in case's prompt: the model must
#: generalise to the case set's irrelevance prompts, not remember them.
OFF_TOPIC = ("Tell me a story.", "What's the weather like in {z}?", "Who painted the Mona Lisa?",
             "Translate thank you into French.", "Book a flight to {z}.",
             "Send a message to Alice.", "Write a haiku about autumn.",
             "What is the capital of Spain?", "Turn on the lights.", "Order some sushi.",
             "Recommend a good book.", "How do I bake bread?", "Call my mother.",
             "Summarise this article for me.", "Find a hotel in {z}.", "Set an alarm for 7.")
OPS = ("+", "-", "*", "/", "//", "%", "**")


def _number(rng: random.Random) -> str:
    digits = rng.choice((1, 1, 2, 2, 2, 3, 3, 4))
    value = str(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1))
    return value + (f".{rng.randint(1, 99)}" if rng.random() < 0.08 else "")


def expression(rng: random.Random) -> str:
    """An arithmetic expression written with spaces around operators, as users write it."""
    if rng.random() < 0.75:
        op = rng.choice(OPS)
        right = str(rng.randint(1, 6)) if op == "**" else _number(rng)
        return f"{_number(rng)} {op} {right}"
    a, b, c = _number(rng), _number(rng), _number(rng)
    o1, o2 = rng.choice(OPS[:4]), rng.choice(OPS[:4])
    return rng.choice((f"({a} {o1} {b}) {o2} {c}", f"{a} {o1} {b} {o2} {c}",
                       f"{a} {o1} ({b} {o2} {c})"))


#: The built-in case set (read as data: in-env code imports no host-side ``owllm``).
CASES_FILE = Path(__file__).resolve().parent.parent / "quality" / "data" / "builtin_cases.jsonl"


@cache
def held_out() -> frozenset[str]:
    """The built-in cases' prompts: never a training request, so the measured pass rate is
    generalisation to unseen requests of the same phrasing families, not recall.  (The
    trainer's content hash covers the case file too.)"""
    if not CASES_FILE.is_file():
        return frozenset()
    lines = CASES_FILE.read_text(encoding="utf-8").splitlines()
    return frozenset(json.loads(line)["prompt"] for line in lines if line.strip())


def request_for(tool: str, rng: random.Random, wild: bool = False
                ) -> tuple[str, dict[str, Any]]:
    """(a user request due ``tool``, the args it is due), never a built-in case's prompt.
    ``wild``: made-up words and zone names, which no model can guess from the usual ones:
    only copying them from the request lowers the loss (the drill that teaches copying)."""
    while True:
        request, args = _request_for(tool, rng, wild)
        if request not in held_out():
            return request, args


def made_up(rng: random.Random) -> str:
    """A pronounceable made-up lowercase word of 3 to 8 letters."""
    letters = "".join(rng.choice("bcdfghklmnprstvwz") + rng.choice("aeiou")
                      for _ in range(rng.randint(2, 4)))
    return letters[:rng.randint(3, len(letters))]


def _request_for(tool: str, rng: random.Random, wild: bool) -> tuple[str, dict[str, Any]]:
    if tool == "calculator":
        e = expression(rng)
        return rng.choice(CALC_PHRASES).format(e=e), {"expression": e}
    if tool == "echo":
        words = [made_up(rng) if wild else rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
        t = " ".join(words)
        return rng.choice(ECHO_PHRASES).format(t=t), {"text": t}
    if rng.random() < 0.2:
        return rng.choice(TIME_PLAIN), {}
    z = f"{made_up(rng).title()}/{made_up(rng).title()}" if wild else rng.choice(ZONES)
    return rng.choice(TIME_PHRASES).format(z=z), {"timezone": z}


@dataclass(frozen=True)
class Example:
    """One training or evaluation example."""

    backend: str
    tools: tuple[str, ...]
    request: str
    calls: tuple[tuple[str, dict[str, Any]], ...]  # empty: no call is due
    show_tools: bool = True  # False: the prompt lists no tools (a short copying drill)
    system: str = ""  # a system message before the request (a config's system_prompt)

    @property
    def prompt(self) -> str:
        return render_prompt(self.backend, list(self.tools) if self.show_tools else [],
                             self.request)

    @property
    def answer(self) -> str:
        return answer_text(list(self.calls))


def offered(rng: random.Random, parallel: bool = False) -> tuple[str, ...]:
    """A non-empty subset of the built-in tools in random order (half the time all three;
    two at least for ``parallel``)."""
    names = list(TOOLS)
    rng.shuffle(names)
    return tuple(names if rng.random() < 0.5 else names[:rng.randint(2 if parallel else 1, 2)])


def example(rng: random.Random, backend: str, tools: tuple[str, ...],
            parallel: bool = False, wild: bool = False) -> Example:
    """A request for the prompt (backend, tools): a due call (mostly) or none; ``parallel``
    (two tools offered at least): two independent requests joined, due two calls."""
    if parallel and len(tools) >= 2:
        first, second = rng.sample(list(tools), 2)
        r1, a1 = request_for(first, rng, wild)
        r2, a2 = request_for(second, rng, wild)
        joined = f"{r1.rstrip('.?')} and also: {r2}"
        if joined not in held_out():
            return Example(backend, tools, joined, ((first, a1), (second, a2)))
    if rng.random() < 0.12:
        missing = [name for name in TOOLS if name not in tools]
        if missing and rng.random() < 0.5:
            request, _ = request_for(rng.choice(missing), rng)
        else:
            request = rng.choice(OFF_TOPIC).format(z=rng.choice(ZONES))
        return Example(backend, tools, request, ())
    tool = rng.choice(tools)
    request, args = request_for(tool, rng, wild)
    return Example(backend, tools, request, ((tool, args),))


#: Share of batches with a system message, and the messages: servers put a configured
#: ``system_prompt`` before the request (the shipped demos say the first one), and the model
#: must call tools the same way under it.
SYSTEM_SHARE = 0.25
SYSTEMS = ("You are a helpful assistant.", "You are a careful assistant.",
           "You are terse. Answer briefly.")

#: Share of batches whose examples are all due two calls: kept apart because their answers
#: are twice as long, and padding every batch to their length would cost a third more.
PARALLEL_BATCHES = 0.1


def batch(rng: random.Random, size: int, short: bool = False) -> list[Example]:
    """``size`` examples sharing one prompt head (backend and tool list): the trainer runs
    that shared head once per batch.  ``short``: the copying drill, the prompt lists no tools
    (every tool may be due) and the arguments are made up (``wild``)."""
    backend = rng.choice(list(TEMPLATES))
    parallel = rng.random() < PARALLEL_BATCHES
    system = rng.choice(SYSTEMS) if rng.random() < SYSTEM_SHARE else ""
    tools = tuple(TOOLS) if short else offered(rng, parallel)
    return [replace(example(rng, backend, tools, parallel, short), show_tools=not short,
                    system=system) for _ in range(size)]


def tokenizer_corpus() -> str:
    """Text the tokenizer is trained on: every prompt head, requests and answers."""
    rng = random.Random(1234)
    parts = [render_prompt(b, list(TOOLS), "") for b in TEMPLATES] + ["<|user|>", "<|assistant|>"]
    for i in range(400):
        parallel = i % 10 == 0
        parts.append(example(rng, rng.choice(list(TEMPLATES)), offered(rng, parallel),
                             parallel).answer)
        parts.append(example(rng, "remote", tuple(TOOLS)).request)
    return "\n".join(parts) + "\n"
