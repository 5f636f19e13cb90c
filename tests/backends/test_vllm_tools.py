"""The OpenAI tools API on OWLLM's vLLM server (issue #15): ``tools`` with ``tool_choice``
auto / required / none / named, ``parallel_tool_calls``, streamed ``tool_calls`` deltas,
``finish_reason``, ``role: tool`` messages, asked with the official ``openai`` client.

The server is the shipped config's ``demo-vllm``, started once per run and shared with
tests/backends/test_engines.py (pytest_owllm's factory).  vLLM answers ``required`` and named
choices itself through structured output; ``auto`` goes through OWLLM's tool parser
(owllm/inenv/vllm_tool_parser.py), whose envelope a random-weight model writes only when it
is constrained to: those tests ask for the envelope with ``response_format``, which vLLM
leaves alone under ``auto``.  The parser's scanner is also tested here without vLLM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from owllm.backends import BackendContext
from owllm.backends.vllm import TOOL_PARSER_SOURCE, TOOLS_PREAMBLE, VllmBackend
from owllm.config import ModelConfig
from owllm.envs import EnvSpec
from owllm.inenv.vllm_tool_parser import EnvelopeScanner, scan_whole
from owllm.paths import Home

FLAG = {"name": "get_flag", "description": "Say yes or no.", "parameters": {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
    "additionalProperties": False}}
PICK = {"name": "pick", "parameters": {
    "type": "object", "properties": {"n": {"type": "integer", "enum": [1, 2, 3]}},
    "required": ["n"], "additionalProperties": False}}
TOOLS = [{"type": "function", "function": FLAG}, {"type": "function", "function": PICK}]
USER = [{"role": "user", "content": "Pick a number."}]
BUDGET = 96  # tokens: room for a required call (a JSON array) of this tiny vocabulary


def envelope(name: str = "pick") -> dict[str, Any]:
    """The JSON schema of one OWLLM envelope calling ``name`` (the ``auto`` tests' format)."""
    params = {"get_flag": FLAG, "pick": PICK}[name]["parameters"]
    return {"type": "object", "additionalProperties": False,
            "required": ["tool", "args", "id"], "properties": {
                "tool": {"const": name}, "args": params,
                "id": {"type": "string", "pattern": "^call_[0-9]$"}}}


def as_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "call", "schema": schema,
                                                   "strict": True}}


# -- the scanner, without vLLM ------------------------------------------------------------

def streamed(text: str, step: int, names: frozenset[str] = frozenset({"calc", "echo"})
             ) -> tuple[str, dict[int, dict[str, Any]]]:
    """Feed ``text`` in pieces of ``step`` characters; the content and the calls joined the
    way an OpenAI client joins deltas (asserting the name comes once, with the id)."""
    scanner, content, calls = EnvelopeScanner(names), "", {}
    for start in range(0, len(text), step):
        piece, deltas = scanner.feed(text[start:start + step])
        content += piece
        for delta in deltas:
            call = calls.setdefault(delta["index"], {"arguments": ""})
            if "name" in delta:
                assert "name" not in call and delta["id"]
                call.update(id=delta["id"], name=delta["name"])
            call["arguments"] += delta.get("arguments", "")
    return content, calls


CALLS = [
    '{"tool": "calc", "args": {"expression": "42 * 17"}, "id": "call_1"}',
    '[{"tool":"calc","args":{"x":[1,{"y":"}\\""}]},"id":"call_1"}, '
    '{"id":"call_1","args":{"t":"a b "},"tool":"echo"}]',
    '  {"args": {}, "tool": "echo"}',
]


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
@pytest.mark.parametrize("text", CALLS)
def test_streamed_calls_join_to_the_whole_answers_calls(text: str, step: int) -> None:
    content, calls = streamed(text, step)
    found = scan_whole(text, {"calc", "echo"})
    assert found is not None and content == ""
    whole, rest = found
    assert rest is None and len(calls) == len(whole)
    data = json.loads(text)
    envelopes = data if isinstance(data, list) else [data]
    for index, call in enumerate(whole):
        assert calls[index]["name"] == call["name"]
        assert calls[index]["arguments"] == call["arguments"]
        assert json.loads(call["arguments"]) == envelopes[index]["args"]
    assert len({c["id"] for c in whole}) == len(whole)  # a repeated envelope id is replaced


@pytest.mark.parametrize("text", [
    "Hello there", 'hello {"tool": "calc", "args": {}}', '{"tool": "nope", "args": {}}',
    '{"answer": 1}', '{"tool": "calc", "args": 5, "id": "x"}', "[1, 2]", "{}", "[]",
])
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_text_that_is_not_a_call_is_content_verbatim(text: str, step: int) -> None:
    assert streamed(text, step) == (text, {})
    assert scan_whole(text, {"calc", "echo"}) is None


def test_a_call_cut_short_is_no_call_in_a_whole_answer() -> None:
    text = '{"tool": "calc", "args": {"a": 1'
    assert scan_whole(text, {"calc"}) is None  # vLLM then says "length", not "tool_calls"
    _, calls = streamed(text, 4)
    assert calls[0]["name"] == "calc" and calls[0]["arguments"] == '{"a": 1'


def test_calls_in_an_array_need_their_commas() -> None:
    text = '[{"tool": "calc", "args": {}} {"tool": "echo", "args": {}}]'
    assert scan_whole(text, {"calc", "echo"}) is None
    content, calls = streamed(text, 5)
    assert [c["name"] for c in calls.values()] == ["calc"]  # sent before the break
    assert content.startswith(" {") or content.startswith("{")
    assert scan_whole('[{"tool": "calc", "args": {}}, ]', {"calc"}) is None


def test_text_after_a_call_is_content() -> None:
    text = '{"tool": "calc", "args": {}} and more'
    found = scan_whole(text, {"calc"})
    assert found is not None
    calls, rest = found
    assert [(c["name"], c["arguments"]) for c in calls] == [("calc", "{}")]
    assert rest == " and more" and calls[0]["id"].startswith("call_")
    assert streamed(text, 3)[0] == " and more"


# -- the launch --------------------------------------------------------------------------

def launch_argv(tmp_path: Path, *server_args: str,
                template: str = "{{ messages }}") -> list[str]:
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "chat_template.jinja").write_text(template, encoding="utf-8")
    env = EnvSpec(key="vllm-cpu", path=tmp_path, python_executable=Path(sys.executable))
    ctx = BackendContext(home=Home(tmp_path / "home").ensure(), env=env, base_dir=tmp_path,
                         registry=None)  # type: ignore[arg-type]
    model = ModelConfig(model_id="m", base_model=str(folder), backend="vllm", device="cpu",
                        dtype="float32", server_args=server_args)
    return list(VllmBackend().launch(model, folder, ctx, "127.0.0.1", 1).argv)


def test_launch_registers_owllms_parser_and_a_template_that_describes_tools(
        tmp_path: Path) -> None:
    argv = launch_argv(tmp_path)
    plugin = Path(argv[argv.index("--tool-parser-plugin") + 1])
    assert plugin.read_text(encoding="utf-8") == TOOL_PARSER_SOURCE.read_text(encoding="utf-8")
    assert argv[argv.index("--tool-call-parser") + 1] == "owllm"
    assert "--enable-auto-tool-choice" in argv
    template = Path(argv[argv.index("--chat-template") + 1]).read_text(encoding="utf-8")
    assert template.startswith("{%- if tools -%}") and template.endswith("{{ messages }}")
    assert json.dumps(TOOLS_PREAMBLE) in template


def test_a_template_that_renders_tools_itself_is_left_alone(tmp_path: Path) -> None:
    argv = launch_argv(tmp_path, template="{% if tools %}{{ tools }}{% endif %}")
    assert "--chat-template" not in argv and "--tool-call-parser" in argv


def test_a_users_own_tool_parser_replaces_owllms(tmp_path: Path) -> None:
    argv = launch_argv(tmp_path, "--tool-call-parser", "hermes")
    assert argv.count("--tool-call-parser") == 1 and argv[-1] == "hermes"
    assert "--tool-parser-plugin" not in argv and "--enable-auto-tool-choice" not in argv
    assert "--chat-template" not in argv  # no system prompt, no tools clause: nothing to wrap


# -- the real server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm(owllm_config: Any, owllm_server_factory: Any) -> dict[str, Any]:
    """The run's demo-vllm server (its StateStore row)."""
    if "demo-vllm" not in owllm_config.models:
        pytest.skip("the run's config has no demo-vllm model")
    return dict(owllm_server_factory("demo-vllm"))


@pytest.fixture(scope="module")
def client(vllm: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=vllm["url"] + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def ask(client: openai.OpenAI, **kwargs: Any) -> Any:
    body = {"model": "demo-vllm", "messages": USER, "tools": TOOLS, "temperature": 0,
            "max_tokens": BUDGET, **kwargs}
    return client.chat.completions.create(**body)


def joined(stream: Any) -> tuple[dict[int, dict[str, Any]], str | None, str]:
    """Calls joined from a stream's deltas (name counted), its finish_reason, its content."""
    calls: dict[int, dict[str, Any]] = {}
    finish, content = None, ""
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"names": 0, "arguments": "", "id": None})
                if delta.id:
                    call["id"] = delta.id
                if delta.function and delta.function.name:
                    call["names"] += 1
                    call["name"] = delta.function.name
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return calls, finish, content


@pytest.mark.slow
def test_required_returns_a_complete_call_streamed_or_not(client: openai.OpenAI) -> None:
    choice = ask(client, tool_choice="required").choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    call = choice.message.tool_calls[0]
    assert call.function.name in ("get_flag", "pick") and call.id
    whole = json.loads(call.function.arguments)
    calls, finish, content = joined(ask(client, tool_choice="required", stream=True))
    assert finish == "tool_calls" and not content
    first = calls[0]
    assert first["names"] == 1 and first["id"] and first["name"] == call.function.name
    assert json.loads(first["arguments"]) == whole  # greedy: the same call


@pytest.mark.slow
def test_named_choice_calls_that_function(client: openai.OpenAI) -> None:
    named = {"type": "function", "function": {"name": "pick"}}
    choice = ask(client, tool_choice=named).choices[0]
    call = choice.message.tool_calls[0]
    # OpenAI ends a forced function call with "stop"; never "tool_calls" for a cut one.
    assert call.function.name == "pick" and choice.finish_reason == "stop"
    assert json.loads(call.function.arguments)["n"] in (1, 2, 3)
    calls, finish, _ = joined(ask(client, tool_choice=named, stream=True))
    assert finish == "stop" and len(calls) == 1 and calls[0]["names"] == 1
    assert json.loads(calls[0]["arguments"]) == json.loads(call.function.arguments)


@pytest.mark.slow
def test_parallel_tool_calls_false_gives_one_call(client: openai.OpenAI) -> None:
    choice = ask(client, tool_choice="required", parallel_tool_calls=False).choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1


@pytest.mark.slow
def test_a_call_cut_by_max_tokens_is_not_tool_calls(client: openai.OpenAI) -> None:
    choice = ask(client, tool_choice="required", max_tokens=4).choices[0]
    assert choice.finish_reason == "length" and not choice.message.tool_calls
    _, finish, _ = joined(ask(client, tool_choice="required", max_tokens=4, stream=True))
    assert finish == "length"


@pytest.mark.slow
def test_auto_reads_owllms_envelope_into_tool_calls(client: openai.OpenAI) -> None:
    fmt = as_format(envelope("pick"))
    choice = ask(client, tool_choice="auto", response_format=fmt).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "pick" and call.id.startswith("call_")
    calls, finish, content = joined(ask(client, response_format=fmt, stream=True))
    assert finish == "tool_calls" and content == "" and calls[0]["names"] == 1
    assert calls[0]["arguments"] == call.function.arguments  # the model's own JSON text
    # Several calls: an array of envelopes; ids stay unique.
    two = as_format({"type": "array", "items": envelope("pick"), "minItems": 2,
                     "maxItems": 2})
    message = ask(client, response_format=two).choices[0].message
    assert [c.function.name for c in message.tool_calls] == ["pick", "pick"]
    assert len({c.id for c in message.tool_calls}) == 2
    calls, finish, _ = joined(ask(client, response_format=two, stream=True))
    assert finish == "tool_calls" and sorted(calls) == [0, 1]
    assert all(c["names"] == 1 for c in calls.values())


@pytest.mark.slow
def test_auto_may_answer_in_text_and_none_never_calls(client: openai.OpenAI) -> None:
    for choice_name in ("auto", "none"):
        choice = ask(client, tool_choice=choice_name, max_tokens=8).choices[0]
        assert not choice.message.tool_calls and choice.finish_reason in ("stop", "length")
        calls, finish, content = joined(ask(client, tool_choice=choice_name, max_tokens=8,
                                            stream=True))
        assert calls == {} and content == (choice.message.content or "")
        assert finish == choice.finish_reason


@pytest.mark.slow
def test_tool_results_go_back_in(client: openai.OpenAI) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "pick", "arguments": '{"n": 2}'}}
    back = [*USER, {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "2"}]
    before = ask(client, max_tokens=1)
    after = ask(client, messages=back, max_tokens=4)
    assert after.choices[0].message.role == "assistant"
    assert after.usage.prompt_tokens > before.usage.prompt_tokens


@pytest.mark.slow
def test_tools_are_described_as_on_the_transformers_server(vllm: dict[str, Any],
                                                           client: openai.OpenAI) -> None:
    """The prompt holds OWLLM's tools system message, token for token: the text OWLLM's
    transformers server builds (its system message replaces the configured system prompt)."""
    fn = FLAG
    text = ("<s><|system|>\n" + TOOLS_PREAMBLE + json.dumps([fn]) + "\n<|user|>\nHi\n"
            "<|assistant|>\n")
    counted = httpx.post(vllm["url"] + "/tokenize", timeout=60, json={
        "model": "demo-vllm", "prompt": text, "add_special_tokens": False}).json()["count"]
    used = ask(client, messages=[{"role": "user", "content": "Hi"}],
               tools=[{"type": "function", "function": fn}], max_tokens=1)
    assert used.usage.prompt_tokens == counted


@pytest.mark.slow
def test_plain_chat_and_json_output_pass_the_parser_untouched(client: openai.OpenAI) -> None:
    fmt = as_format(envelope("pick"))  # JSON that looks like a call, but no tools
    body = {"model": "demo-vllm", "messages": USER, "temperature": 0, "max_tokens": BUDGET,
            "response_format": fmt}
    message = client.chat.completions.create(**body).choices[0].message
    assert not message.tool_calls and json.loads(message.content or "")["tool"] == "pick"
    calls, _, content = joined(client.chat.completions.create(**body, stream=True))
    assert calls == {} and content == message.content


@pytest.mark.slow
def test_a_named_tool_that_is_not_offered_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        ask(client, tool_choice={"type": "function", "function": {"name": "absent"}})


@pytest.mark.slow
def test_the_start_recorded_the_probed_tools_capabilities(vllm: dict[str, Any]) -> None:
    record = vllm["extra"]["capabilities"]
    for name in ("tools_required", "tools_named", "tools_streaming", "tool_message"):
        # True, or unknown when the start's budget ran out on a busy machine; never false.
        assert record[name] in (True, None), (name, record["reasons"][name])
    assert record["tools"] in (True, None)
