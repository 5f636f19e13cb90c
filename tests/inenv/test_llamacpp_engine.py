"""The llama.cpp engine against the transformers engine and model, on the same weights (the
demo model, and its f32 GGUF from OWLLM's converter), each in its real env: the same chat
prompt text and token ids, the same greedy tokens, and the generation rules of ``engine``
(exact max_tokens, stop strings excluded, seeds, a tiny top_p, logprobs, grammars).

Each env runs one script that does every case and prints JSON; the tests assert on it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from owllm.envs import EnvRegistry
from owllm.envs.runner import inenv_argv
from owllm.inenv import PACKAGE_DIR

pytestmark = [pytest.mark.slow]

SYSTEM = "You are a helpful assistant."
TOOLS = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]
CHATS: dict[str, dict[str, Any]] = {
    "one-turn": {"messages": [{"role": "user", "content": "Say hello."}]},
    "own-system": {"messages": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello!"},
                                {"role": "user", "content": "And now? ünï 🙂"}]},
    "parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "Two "},
                                                        {"type": "text", "text": "parts"}]}]},
    "tools": {"tools": TOOLS, "messages": [
        {"role": "user", "content": "What is 42 * 17?"},
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_1", "type": "function",
            "function": {"name": "calculator", "arguments": "{\"expression\": \"42 * 17\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "714"}]},
}
TEXTS = ["Once upon a time", "Hello! How can I help you today?", "{\"tool\": \"echo\"",
         "  two  spaces\tand a tab\n\nnewlines", "<s>special</s> text"]
PROMPTS = ["Once upon a time", "Hello! How can I help you today?", "What is 42 * 17?"]

# Loads the in-env package the way __main__.py does (relative imports resolve), by path.
LOAD = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location(
    "_owllm_inenv", {str(Path(PACKAGE_DIR) / "__init__.py")!r},
    submodule_search_locations=[{str(PACKAGE_DIR)!r}])
package = importlib.util.module_from_spec(spec)
sys.modules["_owllm_inenv"] = package
spec.loader.exec_module(package)
case = json.loads(sys.stdin.read())
"""

TRANSFORMERS_SIDE = LOAD + """
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from _owllm_inenv.transformers_engine import Engine
engine = Engine({"model_id": "m", "model_path": case["model"], "system_prompt": case["system"]})
engine.tokenizer = tok = AutoTokenizer.from_pretrained(case["model"])
model = AutoModelForCausalLM.from_pretrained(case["model"], dtype=torch.float32).eval()
out = {"chats": {}, "texts": {}, "greedy": {}}
for name, chat in case["chats"].items():
    prompt = engine.chat_prompt(chat["messages"], chat.get("tools"))
    out["chats"][name] = [prompt, engine.encode(prompt, True)]
for text in case["texts"]:
    out["texts"][text] = engine.encode(text, False)
for prompt in case["prompts"]:
    ids = tok(prompt).input_ids
    gen = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
    out["greedy"][prompt] = gen[0, len(ids):].tolist()
print(json.dumps(out))
"""

LLAMA_SIDE = LOAD + """
from _owllm_inenv.engine import SamplingParams
from _owllm_inenv.llamacpp_engine import LlamaCppEngine
from _owllm_inenv import llamacpp_grammar
engine = LlamaCppEngine({"model_id": "m", "model_path": case["gguf"], "n_ctx": 1024,
                         "system_prompt": case["system"]})
engine.load()

def run(prompt, matcher=None, **params):
    steps = list(engine.generate(engine.encode(prompt, False),
                                 SamplingParams(**params), matcher))
    return {"text": "".join(s.text for s in steps), "tokens": steps[-1].tokens,
            "finish": steps[-1].finish, "records": len(steps),
            "logprobs": [[s.logprob.token, s.logprob.logprob,
                          [[t.token, t.logprob] for t in s.logprob.top]]
                         for s in steps if s.logprob is not None]}

out = {"chats": {}, "texts": {}, "greedy": {}}
for name, chat in case["chats"].items():
    prompt = engine.chat_prompt(chat["messages"], chat.get("tools"))
    out["chats"][name] = [prompt, engine.encode(prompt, True)]
for text in case["texts"]:
    out["texts"][text] = engine.encode(text, False)
for prompt in case["prompts"]:
    # The generated ids, from the tokens the KV cache holds (the last token of a budget is
    # never evaluated: 17 for 16).
    ids = engine.encode(prompt, False)
    run(prompt, max_tokens=17)
    out["greedy"][prompt] = engine.llm.input_ids[len(ids):engine.llm.n_tokens].tolist()[:16]
# the KV cache of a shared prefix is reused; the answers are those of a fresh start
out["reuse"] = [run(p, max_tokens=12)["text"] for p in
                ("Hello! How", "Hello! How can I", "Hello! How", "Hello! How can I")]
out["budgets"] = {n: run("Once upon a time", max_tokens=n) for n in range(1, 8)}
out["stop_base"] = run("Once upon a time", max_tokens=24)
base = out["stop_base"]["text"]  # a stop string from the middle of the greedy text
out["stop"] = base[len(base) // 2:len(base) // 2 + 2]
out["stopped"] = run("Once upon a time", max_tokens=24, stops=(out["stop"],))
out["seeded"] = [run("Once upon a time", max_tokens=12, temperature=1.0, seed=s)["text"]
                 for s in (7, 7, 8)]
out["tiny_top_p"] = run("Once upon a time", max_tokens=12, temperature=1.0, top_p=1e-300,
                        seed=1)
out["hot"] = run("Once upon a time", max_tokens=12, temperature=2.0, seed=1)
import llama_cpp
from _owllm_inenv.openai_helpers import TailDecoder
texts = {llama_cpp.llama_vocab_get_text(engine.vocab, t): t for t in range(len(engine.pieces))}
b = lambda *xs: [texts[f"<0x{x:02X}>".encode()] for x in xs]
word = texts["\u2581model".encode()]
decoder = TailDecoder(engine.decode)
out["utf8"] = {"euro": engine.decode(b(0xE2, 0x82, 0xAC)),
               "cut": engine.decode(b(0xE2, 0x82) + [word]), "two": engine.decode(b(0xFF, 0xFE)),
               "start": engine.decode([word, word]),
               "held": [decoder.add(t) for t in b(0xE2, 0x82) + [word]]}
import numpy as np
from _owllm_inenv.llamacpp_engine import sample
rng, probs = np.random.default_rng(0), np.log(np.array([0.5, 0.3, 0.15, 0.05]))
out["nucleus"] = {str(p): np.bincount([sample(probs, 1.0, p, rng) for _ in range(4000)],
                                      minlength=4).tolist() for p in (0.7, 1.0)}
out["top3"] = run("Once upon a time", max_tokens=4, top_logprobs=3)
schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1,
                                                 "maximum": 3}}, "required": ["n"]}
fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
before = llamacpp_grammar._cached_grammar.cache_info().misses
out["json"] = [run("Once upon a time", engine.matcher(fmt), max_tokens=40,
                   temperature=1.0, seed=s) for s in range(3)]
out["json_object"] = run("Once upon a time", engine.matcher({"type": "json_object"}),
                         max_tokens=40, temperature=1.0, seed=0)
out["compiled"] = llamacpp_grammar._cached_grammar.cache_info().misses - before
# top_p < 1 masks the whole vocabulary at every token; top_p 1 checks the pick first
out["json_greedy"] = [run("Hello!", engine.matcher({"type": "json_object"}), max_tokens=60,
                          top_p=p)["text"] for p in (1.0, 0.5)]
try:
    engine.matcher({"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}})
    out["bad_schema"] = None
except Exception as exc:
    out["bad_schema"] = [type(exc).__name__, exc.status, exc.param, exc.message]
try:
    engine.matcher(None, {"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}})
    out["bad_tools"] = None
except Exception as exc:
    out["bad_tools"] = [type(exc).__name__, exc.status, exc.param, exc.message]
print(json.dumps(out))
"""


def run_script(python: Path, script: str, case: dict[str, Any]) -> Any:
    result = subprocess.run([str(python), "-c", script], input=json.dumps(case),
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def llama_env(owllm_registry: EnvRegistry) -> Any:
    return owllm_registry.ensure_env("llamacpp-cpu")


@pytest.fixture(scope="module")
def demo_gguf(llama_env: Any, demo_model_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model as an f32 GGUF (f32: the same arithmetic as the f32 transformers
    model, so greedy tokens can be compared exactly)."""
    out = tmp_path_factory.mktemp("gguf") / "demo.f32.gguf"
    subprocess.run(inenv_argv(llama_env.python_executable, "gguf_convert", "--model-dir",
                              str(demo_model_dir), "--out", str(out), "--outtype", "f32"),
                   check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def sides(llama_env: Any, demo_gguf: Path, demo_model_dir: Path,
          env_python: Path) -> dict[str, Any]:
    case: dict[str, Any] = {
        "model": str(demo_model_dir), "gguf": str(demo_gguf), "system": SYSTEM,
        "chats": CHATS, "texts": TEXTS, "prompts": PROMPTS}
    hf = run_script(env_python, TRANSFORMERS_SIDE, case)
    llama = run_script(Path(llama_env.python_executable), LLAMA_SIDE, case)
    return {"hf": hf, "llama": llama, "stop": llama["stop"]}


@pytest.mark.parametrize("name", sorted(CHATS))
def test_chat_prompts_are_the_transformers_engines(sides: dict[str, Any], name: str) -> None:
    hf_prompt, hf_ids = sides["hf"]["chats"][name]
    prompt, ids = sides["llama"]["chats"][name]
    assert prompt == hf_prompt
    assert ids == hf_ids and ids[0] == 1  # one BOS, from the template
    assert ids.count(1) == 1


def test_plain_prompts_tokenize_as_in_transformers(sides: dict[str, Any]) -> None:
    assert sides["llama"]["texts"] == sides["hf"]["texts"]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_are_the_transformers_models(sides: dict[str, Any], prompt: str) -> None:
    hf = sides["hf"]["greedy"][prompt]
    llama = sides["llama"]["greedy"][prompt]
    assert hf and llama[:len(hf)] == hf  # transformers stops at EOS, llama.cpp as well
    assert len(llama) == len(hf)


def test_a_reused_prefix_changes_nothing(sides: dict[str, Any]) -> None:
    first, longer, again, longer_again = sides["llama"]["reuse"]
    assert first == again and longer == longer_again and first != longer


def test_max_tokens_is_exact(sides: dict[str, Any]) -> None:
    for n, result in sides["llama"]["budgets"].items():
        assert (result["tokens"], result["finish"]) == (int(n), "length"), (n, result)
        assert result["records"] == int(n) + 1  # one per token, then the finish


def test_a_stop_string_ends_the_text_and_is_not_in_it(sides: dict[str, Any]) -> None:
    base, stopped, stop = sides["llama"]["stop_base"], sides["llama"]["stopped"], sides["stop"]
    assert stop in base["text"]
    assert stopped["text"] == base["text"][:base["text"].index(stop)]
    assert stopped["finish"] == "stop" and stopped["tokens"] < base["tokens"]


def test_seeds_repeat_and_sampling_never_breaks(sides: dict[str, Any]) -> None:
    llama = sides["llama"]
    same, again, other = llama["seeded"]
    assert same == again and same != other
    greedy = llama["budgets"]["7"]["text"]
    assert llama["tiny_top_p"]["text"].startswith(greedy[:4])  # top_p 1e-300: the argmax
    assert llama["tiny_top_p"]["tokens"] == 12 and llama["hot"]["tokens"] == 12


def test_invalid_utf8_renders_as_the_transformers_engine_does(sides: dict[str, Any]) -> None:
    """``engine``'s rule (tests/inenv/test_openai_app.py checks the transformers engine):
    one U+FFFD per invalid sequence, held back until the next token decides it."""
    assert sides["llama"]["utf8"] == {"euro": "€", "cut": "\ufffd model", "two": "\ufffd\ufffd",
                                      "start": "model model", "held": ["", "", "\ufffd model"]}


def test_nucleus_sampling_draws_from_the_nucleus(sides: dict[str, Any]) -> None:
    nucleus, full = sides["llama"]["nucleus"]["0.7"], sides["llama"]["nucleus"]["1.0"]
    # p = .5 .3 .15 .05; top_p .7 keeps the first two (.3 crosses the line), renormalized
    assert nucleus[2:] == [0, 0] and nucleus[0] / 4000 == pytest.approx(0.625, abs=0.03)
    assert [n / 4000 for n in full] == pytest.approx([0.5, 0.3, 0.15, 0.05], abs=0.03)


def test_logprobs_are_the_models(sides: dict[str, Any]) -> None:
    steps = sides["llama"]["top3"]["logprobs"]
    assert len(steps) == 4
    for token, logprob, top in steps:
        assert len(top) == 3 and top[0][0] == token and top[0][1] == pytest.approx(logprob)
        assert logprob < 0 and [t[1] for t in top] == sorted((t[1] for t in top), reverse=True)


def test_grammars_constrain_and_compile_once(sides: dict[str, Any]) -> None:
    llama = sides["llama"]
    for result in llama["json"]:
        assert result["finish"] == "stop", result
        assert json.loads(result["text"])["n"] in (1, 2, 3)
        assert " " not in result["text"]  # compact: no budget spent on optional blanks
    assert isinstance(json.loads(llama["json_object"]["text"]), dict)
    fast, masked = llama["json_greedy"]
    assert fast == masked and fast.startswith("{")
    assert llama["compiled"] == 1  # once for three requests (json_object: at the warm-up)
    kind, status, param, message = llama["bad_schema"]
    assert (kind, status, param) == ("ApiError", 400, "response_format")
    assert "cannot be compiled to a llama.cpp grammar" in message
    kind, status, param, message = llama["bad_tools"]  # a forced call: the tools are at fault
    assert (kind, status, param) == ("ApiError", 400, "tools") and "tools' parameters" in message
