from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from owllm.config import load_config
from owllm.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_shipped_config_loads_into_frozen_dataclasses() -> None:
    config = load_config(REPO / "configs" / "llm_backends.yaml")
    demo = config.models["demo"]
    assert demo.base_model == "demo://tiny-llama" and demo.is_demo
    assert demo.model_type == "instruct" and demo.backend == "transformers"
    with pytest.raises(AttributeError):
        demo.port = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.models["other"] = demo  # type: ignore[index]


def test_defaults_and_all_fields(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
        models:
          small:
            base_model: org/model
          full:
            base_model: /models/x
            adapter_dir: /adapters/y
            model_type: base
            port: 10501
            use_4bit: true
            system_prompt: be brief
            backend: transformers
            device: cuda
            dtype: bfloat16
            requirements: [einops]
            max_model_len: 512
            generation: {max_tokens: 8, temperature: 0.5, top_p: 0.9}
        """))
    small, full = config.models["small"], config.models["full"]
    assert (small.model_type, small.backend, small.device, small.use_4bit) == (
        "instruct", "transformers", "auto", False)
    assert small.line == 2 and full.line == 4
    assert full.requirements == ("einops",) and full.generation.top_p == 0.9
    assert full.params()["use_4bit"] is True


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("""
        models:
          m:
            base_model: x
            use_4bit: "yes please"
        """, ["cfg.yaml:4: models.m.use_4bit: 'yes please' is not of type 'boolean'"],
        id="wrong-type"),
    pytest.param("""
        models:
          my_model:
            base_model: x
            model_type: chat
        """, ["cfg.yaml:4: models.my_model.model_type: 'chat' is not one of "
              "['instruct', 'base']"], id="bad-enum"),
    pytest.param("""
        models:
          m:
            base_model: x
            use4bit: true
        """, ["cfg.yaml:4: models.m.use4bit: unknown key 'use4bit' (allowed: adapter_dir, "
              "api_key_env, backend, base_model, base_url, ca_bundle, checks, device, dtype, "
              "env_key, "
              "generation, headers, max_model_len, model_type, port, quant, ray, requirements, "
              "served_model, server_args, stall_timeout_s, startup_timeout_s, system_prompt, "
              "timeout_s, tls_verify, use_4bit)"], id="unknown-key"),
    pytest.param("""
        models:
          m:
            model_type: base
        """, ["cfg.yaml:2: models.m: missing required key 'base_model'"], id="missing-base"),
    pytest.param("""
        models:
          m:
            base_model: x
          m:
            base_model: y
        """, ["cfg.yaml:4: models.m: duplicate model id 'm' (first defined at line 2)"],
        id="duplicate-id"),
    pytest.param("""
        - base_model: x
        """, ["cfg.yaml:1: <top level>: expected a mapping with a 'models' key, got list"],
        id="not-a-mapping"),
    pytest.param("", ["cfg.yaml:1: <top level>: file is empty; expected a mapping with a "
                      "'models' key"], id="empty-file"),
    pytest.param("# only a comment\n", ["cfg.yaml:1: <top level>: file is empty; expected a "
                                        "mapping with a 'models' key"], id="only-comment"),
    pytest.param("""
        modles:
          m: {base_model: x}
        """, ["cfg.yaml:1: modles: unknown key 'modles' (allowed: checks, models, "
              "tool_server, tools, version)",
              "cfg.yaml: <top level>: missing required key 'models'"],
        id="typo-top-level"),
    pytest.param("""
        models:
          m:
            base_model: x
            port: 80
        """, ["cfg.yaml:4: models.m.port: 80 is less than the minimum of 1024"], id="port"),
    pytest.param("""
        models:
          m: [1, 2]
        """, ["cfg.yaml:2: models.m: [1, 2] is not of type 'object'"], id="entry-not-map"),
    pytest.param("""
        models:
          v:
            base_model: x
            backend: vllm
            use_4bit: true
        """, ["cfg.yaml:5: models.v.use_4bit: bitsandbytes 4-bit is a transformers option, "
              "not vllm's; for llamacpp set quant: q4_k_m, for vllm serve a pre-quantized "
              "checkpoint (AWQ, GPTQ)"], id="4bit-on-vllm"),
    pytest.param("""
        models:
          g:
            base_model: x
            backend: llamacpp
            adapter_dir: /a
            quant: q9_z
        """, ["cfg.yaml:5: models.g.adapter_dir: LoRA adapters are served by backend: "
              "transformers only in OWLLM; merge the adapter into the weights for llamacpp",
              "cfg.yaml:6: models.g.quant: unknown quant 'q9_z'; known: q4_0, q4_1, q8_0, "
              "q5_0, q5_1, q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k"],
        id="llamacpp-adapter-and-bad-quant"),
    pytest.param("""
        models:
          t:
            base_model: x
            quant: q4_k_m
        """, ["cfg.yaml:4: models.t.quant: quant: is GGUF quantization and applies to "
              "backend: llamacpp only"], id="quant-on-transformers"),
])
def test_bad_yaml_exact_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str,
                                 expected: list[str]) -> None:
    assert sorted(problems(tmp_path, monkeypatch, text)) == sorted(expected)


def test_several_errors_reported_at_once_in_line_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(tmp_path, monkeypatch, """
        models:
          a:
            base_model: x
            model_type: chat
          b:
            base_model: 3
          "bad id!":
            base_model: z
        """)
    assert [p.split(":")[1] for p in found] == ["4", "6", "7"]
    assert "models.b.base_model: 3 is not of type 'string'" in found[1]
    assert "invalid model id 'bad id!'" in found[2]


def test_syntax_error_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(tmp_path, monkeypatch, "models:\n  m: {base_model: x\n  n: 2\n")
    assert len(found) == 1 and found[0].startswith("cfg.yaml:3: invalid YAML")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value) and info.value.exit_code == 2


def test_unknown_model_lists_known_ids(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "models:\n  a: {base_model: x}\n  b: {base_model: y}\n"))
    with pytest.raises(Exception) as info:
        config.model("c")
    assert "unknown model id 'c'" in str(info.value) and "known model ids: a, b" in str(info.value)


def test_the_schema_backend_enum_is_the_registry() -> None:
    from owllm.backends import backend_names
    from owllm.config import config_schema

    backend = config_schema()["$defs"]["model"]["properties"]["backend"]
    assert backend["enum"] == list(backend_names())
    shipped = json.loads((REPO / "owllm" / "schemas" / "llm_backends.schema.json").read_text())
    assert "enum" not in shipped["$defs"]["model"]["properties"]["backend"]  # not copied


def test_an_unknown_backend_lists_the_installed_ones(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from owllm.backends import backend_names

    found = problems(tmp_path, monkeypatch, """
        models:
          s:
            base_model: x
            backend: sglang
        """)
    assert found == [f"cfg.yaml:4: models.s.backend: unknown backend 'sglang'; installed "
                     f"backends: {', '.join(backend_names())}"]


# ---- checks: (issue 17) -------------------------------------------------------------------

def test_checks_merge_the_default_gate_by_gate(tmp_path: Path) -> None:
    (tmp_path / "cases.jsonl").write_text("")
    config = load_config(write(tmp_path, """
        checks:
          tool_calls: {samples: 20, min_pass_rate: 0, max_tokens: 48}
          latency: {max_startup_s: 600}
          parity: {with: a}
        models:
          a:
            base_model: org/model
          b:
            base_model: org/model
            backend: llamacpp
            quant: q8_0
            checks:
              tool_calls: {min_pass_rate: 0.8, constrained: both, cases: cases.jsonl,
                           categories: [simple]}
              latency: null
          c:
            base_model: org/other
            checks: {tool_calls: null, latency: null, parity: null}
        """))
    a, b, c = (config.models[m].checks for m in "abc")
    assert a is not None and b is not None and c is None
    # the default parity names a: it does not apply to a itself
    assert [i for i, _, _ in a.items()] == ["tool_calls", "latency"]
    assert dict(a.tool_calls.settings) == {"samples": 20, "min_pass_rate": 0, "max_tokens": 48}
    assert [i for i, _, _ in b.items()] == ["tool_calls-unconstrained",
                                            "tool_calls-constrained", "parity-a"]
    assert dict(b.tool_calls.settings) == {"samples": 20, "min_pass_rate": 0.8,
                                           "max_tokens": 48,
                                           "cases": str(tmp_path / "cases.jsonl")}
    assert b.tool_calls.categories == ("simple",) and b.tool_calls.modes == (False, True)
    assert b.parity is not None and b.parity.min_prefix_tokens == 16


def test_checks_errors_name_file_line_and_field(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(tmp_path, monkeypatch, """
        checks:
          parity: {with: ghost}
        models:
          a:
            base_model: org/model
            checks:
              tool_calls:
                min_pass_rte: 0.9
                samples: 0
              latency: {max_first_token_s: "1", min_tokens_per_s: -1}
              parity: {with: a}
              speed: {}
          b:
            base_model: org/model
            checks:
              tool_calls: {constrained: maybe, min_pass_rate: 1.5, cases: nope.jsonl}
              parity: {min_prefix_tokens: 4}
        """)
    # The schema's problems first (as for every field); parity.with is checked after.
    assert found == [
        "cfg.yaml:8: models.a.checks.tool_calls.min_pass_rte: unknown key 'min_pass_rte' "
        "(allowed: cases, categories, concurrency, constrained, max_tokens, min_pass_rate, "
        "retries, samples, seed, temperature, template, timeout)",
        "cfg.yaml:9: models.a.checks.tool_calls.samples: 0 is less than the minimum of 1",
        "cfg.yaml:10: models.a.checks.latency.max_first_token_s: '1' is not of type 'number'",
        "cfg.yaml:10: models.a.checks.latency.min_tokens_per_s: -1 is less than the minimum "
        "of 0",
        "cfg.yaml:12: models.a.checks.speed: unknown key 'speed' (allowed: latency, parity, "
        "tool_calls)",
        "cfg.yaml:16: models.b.checks.tool_calls.constrained: 'maybe' is not one of "
        "[False, True, 'both']",
        "cfg.yaml:16: models.b.checks.tool_calls.min_pass_rate: 1.5 is greater than the "
        "maximum of 1",
        "cfg.yaml:17: models.b.checks.parity: missing required key 'with'",
    ]


def test_parity_with_names_another_known_model(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(tmp_path, monkeypatch, """
        checks:
          parity: {with: ghost}
        models:
          a:
            base_model: org/model
            checks:
              parity: {with: a}
          b:
            base_model: org/model
        """)
    assert found == [
        "cfg.yaml:2: checks.parity.with: unknown model 'ghost' (known: a, b)",
        "cfg.yaml:7: models.a.checks.parity.with: a model cannot be compared with itself: "
        "name another model"]


def test_a_missing_case_file_is_a_config_error(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    found = problems(tmp_path, monkeypatch, """
        models:
          a:
            base_model: org/model
            checks:
              tool_calls: {cases: cases/mine.jsonl}
        """)
    assert found == [f"cfg.yaml:5: models.a.checks.tool_calls.cases: case file not found: "
                     f"{tmp_path / 'cases' / 'mine.jsonl'} (model a)"]


def test_shipped_config_has_quality_gates() -> None:
    config = load_config(REPO / "configs" / "llm_backends.yaml")
    items = {m: [i for i, _, _ in (c.checks.items() if c.checks else [])]
             for m, c in config.models.items()}
    assert items == {"demo": ["tool_calls", "latency"],
                     "demo-vllm": ["tool_calls", "latency", "parity-demo"],
                     "demo-llamacpp": ["tool_calls", "latency", "parity-demo"]}
