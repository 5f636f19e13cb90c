"""demo://tiny-tool-caller: its training prompts are the servers' prompts, its targets are
calls the strict parser accepts, and, trained, it passes most built-in simple/multiple cases
unconstrained on OWLLM's transformers server."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from owllm.backends import TOOL_CALL_RULES
from owllm.backends._common import DEMO_MODELS, demo_folder
from owllm.inenv import tool_caller_data as data
from owllm.inenv import tool_caller_tok as tok
from owllm.inenv import tool_caller_train as trainer
from owllm.quality import Endpoint, Rate, ToolCallSettings, load_cases, run_cases
from owllm.tools import ToolCallError, parse_tool_call
from owllm.tools.builtins import builtin_tools
from owllm.tools.prompts import render_tools, template_for
from tests.inenv.conftest import server_config

# Floors a little below the rates measured on the transformers server (all 110 built-in
# cases, unconstrained, temperature 0; docs/decisions.md, "The trained tool caller"; the
# random demo scores 0 on both): the share of simple/multiple replies that are one call of
# the due tool (its arguments aside), and the irrelevance pass rate.  Exact calls (the
# arguments copied too) are 0 so far: no floor is claimed for them.
FLOORS = {"due_tool": 0.85, "irrelevance": 0.35}


@pytest.mark.parametrize("backend", sorted(data.TEMPLATES))
def test_training_prompts_are_the_backends_prompts(backend: str) -> None:
    assert data.RULES == TOOL_CALL_RULES
    assert data.TEMPLATES[backend] == template_for(backend)
    tools = builtin_tools()
    assert list(data.TOOLS) == [t.name for t in tools]
    for tool in tools:
        assert data.render_tool(tool.name) == render_tools([tool])
    names = [t.name for t in tools]
    assert data.render_prompt(backend, names, "What is 1 + 2?") == \
        template_for(backend).format(tools=render_tools(tools), prompt="What is 1 + 2?")


def test_training_targets_are_valid_calls() -> None:
    rng = random.Random(7)
    specs = {t.name: t for t in builtin_tools()}
    seen = {"none": 0, "one": 0, "two": 0}
    for _ in range(300):
        example = data.batch(rng, 1)[0]
        offered = [specs[name] for name in example.tools]
        if not example.calls:
            seen["none"] += 1
            with pytest.raises(ToolCallError):  # the refusal is prose, not a call
                parse_tool_call(example.answer, tools=offered)
            continue
        parsed = parse_tool_call(example.answer, tools=offered)
        calls = parsed if isinstance(parsed, list) else [parsed]
        seen["one" if len(calls) == 1 else "two"] += 1
        assert [(c.tool, c.args) for c in calls] == [(t, a) for t, a in example.calls]
    assert min(seen.values()) > 10


def test_no_training_request_is_a_case_prompt() -> None:
    """The pass rate measures generalisation: the built-in cases' prompts are held out."""
    prompts = {c.prompt for c in load_cases("builtin")}
    assert data.held_out() == prompts
    rng = random.Random(11)
    requests = {e.request for _ in range(400) for e in data.batch(rng, 8)}
    assert len(requests) > 2000 and not requests & prompts
    assert not set(data.OFF_TOPIC) & prompts


def test_a_word_or_number_is_cut_off_from_its_neighbours() -> None:
    """The tokenizer's training text: no piece may glue a letter/digit run to punctuation or
    a space, so an argument encodes alike in the request and in the JSON answer."""
    mark = tok.DELIMITER
    assert tok.mark_boundaries("Echo: apples moon") == f"Echo{mark}: {mark}apples{mark} {mark}moon"
    assert tok.mark_boundaries('{"timezone": "Africa/Lagos"}') == \
        f'{{"{mark}timezone{mark}": "{mark}Africa{mark}/{mark}Lagos{mark}"}}'
    assert tok.mark_boundaries("12 * 3.5") == f"12{mark} * {mark}3{mark}.{mark}5"


def test_cache_folder_follows_the_content_hash() -> None:
    assert DEMO_MODELS["tiny-tool-caller"] == 0
    assert demo_folder("tiny-tool-caller", 0) == f"tiny-tool-caller-{trainer.content_hash()}"
    assert demo_folder("tiny-llama", 0) == "tiny-llama-seed0"  # unchanged
    assert len(trainer.content_hash()) == 12


def test_learning_rate_schedule() -> None:
    rates = [trainer.learning_rate(s, 100, 1e-2, 10) for s in range(100)]
    assert rates[0] == pytest.approx(1e-3) and rates[9] == pytest.approx(1e-2)
    assert rates[10] == pytest.approx(1e-2) and rates[-1] == pytest.approx(1e-3, rel=0.05)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))


@pytest.mark.slow
def test_built_once_and_cached(tool_caller_dir: Path, env_python: Path) -> None:
    from owllm.backends._common import materialize_demo
    from owllm.paths import Home
    from tests.inenv.conftest import CACHE_HOME

    marker = json.loads((tool_caller_dir / ".owllm-demo.json").read_text())
    assert marker["kind"] == "tiny-tool-caller"
    assert marker["content_hash"] == trainer.content_hash()
    assert marker["steps"] == sum(stage[0] for stage in trainer.STAGES)
    assert marker["train_cpu_seconds"] < 240  # one thread: the build's budget (~100 s)
    config = json.loads((tool_caller_dir / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == \
        (128, 2, 512)
    assert config["hidden_size"] // config["num_attention_heads"] == 64
    assert (tool_caller_dir / "tokenizer.model").is_file()  # SentencePiece: llama.cpp converts
    before = (tool_caller_dir / "model.safetensors").stat().st_mtime_ns
    again = materialize_demo("tiny-tool-caller", Home(CACHE_HOME / "home"), env_python)
    assert again == tool_caller_dir
    assert (again / "model.safetensors").stat().st_mtime_ns == before


COPY_CHECK = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
def span_ids(text, value):
    # the ids of the tokens inside value's span, and whether they cover it exactly
    start = text.index(value)
    end = start + len(value)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [(i, a, b) for i, (a, b) in zip(enc.input_ids, enc.offset_mapping)
              if a < end and b > start]
    exact = bool(inside) and inside[0][1] == start and inside[-1][2] == end
    return [i for i, _, _ in inside], exact
out = [[span_ids(request, value), span_ids(answer, value)]
       for request, answer, value in json.loads(sys.stdin.read())]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_arguments_encode_alike_in_request_and_answer(tool_caller_dir: Path,
                                                      env_python: Path) -> None:
    """What makes copying learnable: an argument's tokens in the request reappear, as they
    are, in the JSON answer (the demo tokenizer glued a word to the space or the quote
    before it, so the model had to learn a mapping instead of a copy)."""
    triples = []
    for case in load_cases("builtin"):
        if case.category == "simple" and case.expected and case.expected[0].args:
            value = next(iter(case.expected[0].args.values()))
            answer = json.dumps({"tool": case.expected[0].tool, "args": case.expected[0].args})
            if case.prompt.index(value) > 0:  # (a text's first token carries its offset 0)
                triples.append((case.prompt, answer, value))
    assert len(triples) > 30
    result = subprocess.run([str(env_python), "-c", COPY_CHECK, str(tool_caller_dir)],
                            input=json.dumps(triples), capture_output=True, text=True,
                            check=True, timeout=120)
    encoded = json.loads(result.stdout.strip().splitlines()[-1])
    for (request, answer, _), (in_request, in_answer) in zip(triples, encoded, strict=True):
        assert in_request[1] and in_answer[1], (request, answer, in_request, in_answer)
        assert in_request[0] == in_answer[0], (request, answer)


def due_tool(text: str, due: str) -> bool:
    """The reply is one JSON call naming the due tool (its arguments aside)."""
    try:
        value = json.loads(text)
    except ValueError:
        return False
    return isinstance(value, dict) and value.get("tool") == due


@pytest.mark.slow
def test_trained_model_calls_tools_on_the_server(tool_caller_dir: Path,
                                                 server_factory: Any) -> None:
    """The built-in cases, unconstrained, greedy, through OWLLM's transformers server, every
    category reported (printed): the trained model calls the due tool and declines what no
    tool serves, where the random demo does neither."""
    cases = load_cases("builtin")
    settings = ToolCallSettings(max_tokens=96, concurrency=4)
    trained = server_factory("tool-caller", server_config(
        tool_caller_dir, "tiny-tool-caller", max_model_len=1024,
        generation={"max_tokens": 96, "temperature": 0.0, "top_p": 1.0}))
    report = run_cases(Endpoint(trained.base_url, "tiny-tool-caller"), cases, settings)
    print(report.table())
    assert report.reasons().get("request_failed", 0) == 0
    by_id = {c.id: c for c in cases}
    wanted = [s for s in report.samples if s.category in ("simple", "multiple")]
    chosen = Rate(sum(due_tool(s.text, by_id[s.case_id].expected[0].tool) for s in wanted),
                  len(wanted))
    print(f"due tool called (simple+multiple): {chosen}")
    assert chosen.rate >= FLOORS["due_tool"], report.table()
    assert report.by_category()["irrelevance"].rate >= FLOORS["irrelevance"], report.table()


def test_short_batches_drill_copying_without_the_tool_list() -> None:
    rng = random.Random(3)
    for _ in range(20):
        examples = data.batch(rng, 4, short=True)
        for example in examples:
            assert "args schema" not in example.prompt
            assert example.request in example.prompt
            assert all(tool in data.TOOLS for tool, _ in example.calls)
            for tool, args in example.calls:  # made up: only copying can produce them
                if tool == "echo":
                    assert not set(args["text"].split()) & set(data.WORDS)
                if tool == "current_time" and args:
                    assert args["timezone"] not in data.ZONES
    full = data.batch(random.Random(3), 4)
    assert all("args schema" in e.prompt for e in full)
