"""The servers' pure helpers (stdlib only), imported as the host imports in-env modules."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from owllm.inenv import engine as E
from owllm.inenv import openai_helpers as H
from owllm.inenv import openai_shapes as S
from tests.inenv.conftest import TRANSFORMERS_ENV_PACKAGES


def test_inside_string() -> None:
    assert H.inside_string('{"a')
    assert not H.inside_string('{"a":"b"')
    assert H.inside_string('{"a":"b\\"')  # an escaped quote does not close
    assert not H.inside_string('{"a":"b\\\\"')  # an escaped backslash does not escape


def test_stops() -> None:
    assert H.first_stop("hello world", ["wor", "lo"]) == 3
    assert H.first_stop("hello", ["x"]) is None
    assert H.safe_prefix("hello wo", ["world"]) == "hello "  # may still become the stop
    assert H.safe_prefix("abc\ufffd", []) == "abc"  # half a UTF-8 character waits
    assert H.safe_prefix("say id", ["dazol", "idaz"]) == "say "  # the longest hold wins


def test_parse_tool_calls() -> None:
    (call,) = H.parse_tool_calls('{"tool": "calc", "args": {"x": 1}, "id": "call_7"}')
    assert call == {"id": "call_7", "type": "function",
                    "function": {"name": "calc", "arguments": json.dumps({"x": 1})}}
    calls = H.parse_tool_calls('[{"name": "a", "arguments": {}}, {"name": "b"}]')
    assert [c["function"]["name"] for c in calls] == ["a", "b"]
    assert H.parse_tool_calls("plain text") is None
    assert H.parse_tool_calls('{"no": "name"}') is None


def test_tool_call_schema() -> None:
    tools = [{"type": "function", "function": {"name": "a", "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "b"}}]
    assert H.tool_call_schema(tools, "auto") is None
    assert "anyOf" in H.tool_call_schema(tools, "required")
    named = H.tool_call_schema(tools, {"type": "function", "function": {"name": "b"}})
    assert named["properties"]["tool"] == {"const": "b"}
    parallel = H.tool_call_schema(tools, "required", parallel=True)
    one, many = parallel["anyOf"]
    assert one == H.tool_call_schema(tools, "required")
    assert many == {"type": "array", "items": one, "minItems": 1}
    with pytest.raises(H.ApiError) as caught:
        H.tool_call_schema(tools, {"type": "function", "function": {"name": "zzz"}})
    assert caught.value.status == 400


def test_format_schema() -> None:
    assert H.format_schema({"type": "json_object"}) == {"type": "object"}
    schema = {"type": "integer"}
    assert H.format_schema({"type": "json_schema", "json_schema": {"schema": schema}}) == schema
    for bad in ({"type": "xml"}, {"type": "json_schema", "json_schema": {"schema": 3}}):
        with pytest.raises(H.ApiError):
            H.format_schema(bad)


def test_env_has_the_server_packages(transformers_python: Path) -> None:
    script = ("import json, importlib.metadata as m, sys\n"
              "missing = []\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    try: m.version(name)\n"
              "    except m.PackageNotFoundError: missing.append(name)\n"
              "print(json.dumps(missing))\n")
    result = subprocess.run([str(transformers_python), "-c", script,
                             json.dumps(TRANSFORMERS_ENV_PACKAGES)],
                            capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(result.stdout) == []


def test_reply_shapes_bodies_and_chunks() -> None:
    chat = S.Reply(chat=True, model_id="m", prompt_tokens=5)
    assert chat.rid.startswith("chatcmpl-") and chat.kind == "chat.completion"
    calls = H.parse_tool_calls('{"tool": "calc", "args": {}, "id": "call_1"}')
    choice = chat.choice(0, "ignored", "stop", calls)
    assert choice["finish_reason"] == "tool_calls" and choice["logprobs"] is None
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": calls}
    body = chat.body([choice, chat.choice(1, "hi", "length")], 3)
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    first = json.loads(chat.chunk(0, role=True)[len("data: "):])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant"}
    assert json.loads(chat.usage_chunk(2)[6:])["usage"]["total_tokens"] == 7
    text = S.Reply(chat=False, model_id="m", prompt_tokens=1)
    assert text.rid.startswith("cmpl-")
    assert text.body([text.choice(0, "hi", "length")], 1)["choices"][0] == {
        "index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}
    assert json.loads(text.chunk(1, "x")[6:])["object"] == "text_completion"


def test_tool_call_deltas_name_once_then_arguments() -> None:
    calls = H.parse_tool_calls('[{"tool": "a", "args": {"x": 1}, "id": "call_1"}, '
                               '{"tool": "b", "args": {}, "id": "call_1"}]')
    assert [c["id"] for c in calls] == ["call_1", "call_1_1"]  # ids made unique
    assert H.parse_tool_calls('[{"tool": "a"}, {"tool": "b"}]', parallel=False) is None
    deltas = S.call_deltas(calls)
    assert deltas[0] == [{"index": 0, "id": "call_1", "type": "function",
                          "function": {"name": "a", "arguments": ""}}]
    assert deltas[1] == [{"index": 0, "function": {"arguments": '{"x": 1}'}}]
    assert [d[0]["index"] for d in deltas] == [0, 0, 1, 1]
    assert sum("name" in d[0].get("function", {}) for d in deltas) == 2


def test_logprob_shapes() -> None:
    top = (E.TopToken("a", b"a", -0.5), E.TopToken("\ufffd", b"\xe2", -1.5))
    entries = [E.TokenLogprob("a", b"a", -0.5, top), E.TokenLogprob(" bc", b" bc", -2.0)]
    chat = S.LogprobShaper(chat=True).shape(entries)
    assert chat["content"][0] == {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
        {"token": "a", "logprob": -0.5, "bytes": [97]},
        {"token": "\ufffd", "logprob": -1.5, "bytes": [226]}]}
    shaper = S.LogprobShaper(chat=False, offset=3)  # after an echoed 3-character prompt
    legacy = shaper.shape(entries)
    assert legacy == {"tokens": ["a", " bc"], "token_logprobs": [-0.5, -2.0],
                      "top_logprobs": [{"a": -0.5, "\ufffd": -1.5}, {}], "text_offset": [3, 4]}
    assert shaper.shape(entries[:1])["text_offset"] == [7]  # offsets run on across chunks


def test_chat_messages_render_tool_calls_and_roles() -> None:
    messages = [{"role": "developer", "content": "be brief"},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "calc", "arguments": '{"x": 1}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text",
                                                                         "text": "3"}]}]
    out = H.chat_messages(messages, None, "configured")
    assert out[0] == {"role": "system", "content": "be brief"}  # no configured one added
    assert json.loads(out[1]["content"]) == {"tool": "calc", "args": {"x": 1}, "id": "call_1"}
    assert out[1]["tool_calls"] == messages[1]["tool_calls"]
    assert out[2]["content"] == "3"
    assert messages[2]["content"] != "3"  # the input is left alone
    tools = [{"type": "function", "function": {"name": "calc"}}]
    first = H.chat_messages([{"role": "user", "content": "hi"}], tools, "configured")[:2]
    assert [m["role"] for m in first] == ["system", "system"] and "calc" in first[1]["content"]
    for bad in ([{"role": "user", "content": ["text"]}],
                [{"role": "assistant", "tool_calls": [{"function": "f"}]}]):
        with pytest.raises(H.ApiError) as caught:
            H.chat_messages(bad, None)
        assert caught.value.status == 400 and caught.value.param == "messages"


# -- incremental decoding and stop strings (issue #18) ---------------------------------------

# A SentencePiece-like vocabulary with byte fallback: "▁" is a space, dropped at the very
# start of a decode; <0x..> tokens are raw bytes ("€" is E2 82 AC, split over three tokens).
# Like tokenizers' ByteFallback decoder, a run of byte tokens decodes as one group, and an
# invalid group becomes one U+FFFD per byte: <0x64> ("d") then <0xCB> decode as two U+FFFD.
PIECES = ["▁Hello", "▁wor", "ld", "!", "▁", "EN", "D", "<0xE2>", "<0x82>", "<0xAC>", "▁st",
          "op", "\n", "x", "<0x64>", "<0xCB>"]
BYTES = H.byte_tokens({piece: i for i, piece in enumerate(PIECES)})


def sp_decode(ids: list[int]) -> str:
    parts: list[str] = []
    run = b""
    for i in [*ids, None]:
        piece = PIECES[i] if i is not None else ""
        if i in BYTES:
            run += bytes([int(piece[3:5], 16)])
            continue
        if run:
            try:
                parts.append(run.decode("utf-8"))
            except UnicodeDecodeError:
                parts.append("\ufffd" * len(run))
            run = b""
        parts.append(piece.replace("▁", " "))
    text = "".join(parts)
    return text[1:] if text.startswith(" ") else text


def test_byte_tokens_and_their_groups() -> None:
    assert sorted(PIECES[i] for i in BYTES) == sorted(p for p in PIECES if p.startswith("<0x"))
    d, cb = PIECES.index("<0x64>"), PIECES.index("<0xCB>")
    assert sp_decode([d]) == "d" and sp_decode([d, cb]) == "\ufffd\ufffd"  # the rewrite
    decoder = H.TailDecoder(sp_decode, BYTES)
    assert decoder.add(d) == ""  # held: the next byte may rewrite it
    assert decoder.full_text() == "d"
    decoder.add(cb)
    assert decoder.full_text() == "\ufffd\ufffd"
    assert decoder.add(PIECES.index("x")) == "\ufffd\ufffdx" == decoder.text


def test_stop_found_when_it_spans_tokens() -> None:
    stops = ["world!", "ENDx"]
    tokens = [PIECES.index(p) for p in ["▁Hello", "▁wor", "ld", "!", "x"]]
    decoder = H.TailDecoder(sp_decode, BYTES)
    cuts = []
    for token in tokens:
        seen = len(decoder.text)
        decoder.add(token)
        cuts.append(H.first_stop(decoder.full_text(), stops, seen))
    # Found at the token that completes it; the next search starts past it (the engine has
    # stopped by then), so only a new stop could be reported there.
    assert cuts == [None, None, None, len("Hello "), None]
    assert decoder.text[:cuts[3]] == "Hello "
    # The tail search starts len(stop) - 1 characters back: a stop ending in the new text.
    assert H.first_stop("abcde", ["cde"], seen=4) == 2
    assert H.first_stop("abcde", ["cde"], seen=5) is None  # all of it was searched before


def test_half_a_character_waits_for_its_next_byte() -> None:
    decoder = H.TailDecoder(sp_decode)  # without hold: only the U+FFFD ending makes it wait
    deltas = [decoder.add(PIECES.index(p)) for p in ["▁Hello", "▁", "<0xE2>", "<0x82>"]]
    assert deltas == ["Hello", " ", "", ""]
    assert decoder.full_text() == sp_decode(decoder.ids)  # the partial char, as U+FFFD
    assert decoder.add(PIECES.index("<0xAC>")) == "€"
    assert decoder.text == "Hello €" == sp_decode(decoder.ids)


def full_redecode(ids: list[int], stops: list[str]) -> tuple[str, int]:
    """The reference: decode everything and search everything at each token (what the
    server did before issue #18, minus its streaming)."""
    for n in range(1, len(ids) + 1):
        text = sp_decode(ids[:n])
        cut = H.first_stop(text, stops)
        if cut is not None:
            return text[:cut], n
    return sp_decode(ids), len(ids)


def engine_loop(ids: list[int], stops: list[str]) -> tuple[str, int]:
    """The stop and streaming logic of transformers_engine.Engine.generate, deltas joined."""
    emitted, out, decoder = "", [], H.TailDecoder(sp_decode, BYTES)
    for n, token in enumerate(ids, 1):
        seen = len(decoder.text)
        decoder.add(token)
        text = decoder.full_text()
        assert text == sp_decode(ids[:n])
        cut = H.first_stop(text, stops, seen)
        if cut is not None:
            return "".join(out) + text[len(emitted):cut], n
        safe = H.safe_prefix(decoder.text, stops)
        if len(safe) > len(emitted):
            out.append(safe[len(emitted):])
            emitted = safe
    return "".join(out) + decoder.full_text()[len(emitted):], len(ids)


@given(st.lists(st.integers(0, len(PIECES) - 1), max_size=40),
       st.lists(st.sampled_from(["ld!", "ENDx", "€", "o\nx", "st", "!", "\ufffd", "d"]),
                max_size=4))
@settings(max_examples=400, deadline=None)
def test_incremental_decoding_and_stops_equal_the_full_redecode(ids: list[int],
                                                                stops: list[str]) -> None:
    """Same text, same stop found at the same token, as decoding everything per token."""
    assert engine_loop(ids, stops) == full_redecode(ids, stops)


REAL_TOKENIZER_CHECK = """
import importlib.util, json, random, sys
import transformers
spec = importlib.util.spec_from_file_location("helpers", sys.argv[1])
H = sys.modules["helpers"] = importlib.util.module_from_spec(spec)  # dataclasses need it
spec.loader.exec_module(H)
tok = transformers.AutoTokenizer.from_pretrained(sys.argv[2])
decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
BYTES = H.byte_tokens(tok.get_vocab())

def full_redecode(ids, stops):  # the reference: decode and search everything per token
    for n in range(1, len(ids) + 1):
        text = decode(ids[:n])
        cut = H.first_stop(text, stops)
        if cut is not None:
            return text[:cut], n
    return decode(ids), len(ids)

def engine_loop(ids, stops):  # transformers_engine.Engine.generate's logic, deltas joined
    emitted, out, decoder = "", [], H.TailDecoder(decode, BYTES)
    for n, token in enumerate(ids, 1):
        seen = len(decoder.text)
        decoder.add(token)
        text = decoder.full_text()
        cut = H.first_stop(text, stops, seen)
        if cut is not None:
            return "".join(out) + text[len(emitted):cut], n
        safe = H.safe_prefix(decoder.text, stops)
        if len(safe) > len(emitted):
            out.append(safe[len(emitted):])
            emitted = safe
    return "".join(out) + decoder.full_text()[len(emitted):], len(ids)

rng = random.Random(18)
bad, hits = [], 0
for trial in range(300):
    ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 60))]
    # stops drawn from the output itself, so that they are found (and across tokens)
    full = decode(ids)
    stops = []
    for _ in range(rng.randrange(0, 3)):
        start = rng.randrange(max(1, len(full)))
        stops.append(full[start:start + rng.randrange(1, 6)])
    want, got = full_redecode(ids, stops), engine_loop(ids, stops)
    hits += want[1] < len(ids)
    if want != got:
        bad.append([ids, stops, want, got])
print(json.dumps({"bad": bad[:3], "stopped": hits, "byte_tokens": len(BYTES)}))
"""


def test_server_output_equals_the_full_redecode_on_the_demo_tokenizer(
        env_python: Path, demo_model_dir: Path) -> None:
    """The real tokenizer of the transformers server (SentencePiece, byte fallback): on random
    token sequences, with stop strings taken from the output, the engine's text and the token
    it stops at are those of decoding and searching the whole output at every token."""
    done = subprocess.run([str(env_python), "-I", "-c", REAL_TOKENIZER_CHECK, H.__file__,
                           str(demo_model_dir)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["bad"] == []
    assert result["byte_tokens"] == 256
    assert result["stopped"] > 30  # the stops really were exercised
