"""CPU servers' thread budgets (``owllm/backends/_common.py``, issue #18): each backend gives
a CPU server ``cores // servers`` compute threads when whoever starts several says how many
share the host, the user's explicit choice wins, and a GPU server keeps its engine's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from owllm.backends import BackendContext
from owllm.backends._common import SERVERS_VAR, THREADS_VAR, thread_budget
from owllm.backends._kernels import _probe
from owllm.backends.llamacpp import LlamaCppBackend
from owllm.backends.transformers import TransformersBackend
from owllm.backends.vllm import VllmBackend
from owllm.config import ModelConfig
from owllm.envs import EnvSpec
from owllm.errors import UsageError
from owllm.paths import Home
from tests.backends.test_kernels import context

THREAD_VARS = (SERVERS_VAR, THREADS_VAR, "OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND")


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repo's own run sets a budget for its servers (conftest.py): start from none."""
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    _probe.cache_clear()


@pytest.mark.parametrize(("environ", "cores", "threads"), [
    ({}, 8, None),                                     # nobody said: the engine's default
    ({SERVERS_VAR: "1"}, 8, None),                     # one server has the host to itself
    ({SERVERS_VAR: "3"}, 2, "1"),                      # 3 servers on 2 cores: 1 each
    ({SERVERS_VAR: "3"}, 16, "5"),
    ({SERVERS_VAR: "3", THREADS_VAR: "4"}, 2, "4"),    # the user's choice wins
    ({THREADS_VAR: "2"}, 64, "2"),
])
def test_budget_is_cores_over_servers_unless_the_user_says(environ: dict[str, str], cores: int,
                                                           threads: str | None) -> None:
    choice = thread_budget(environ, cores=cores)
    assert (choice.value if choice else None) == threads
    if choice is not None:
        assert choice.setting == "threads"
        assert (THREADS_VAR if THREADS_VAR in environ else SERVERS_VAR) in choice.reason


@pytest.mark.parametrize("value", ["many", "0", "-2", "1.5"])
@pytest.mark.parametrize("name", [SERVERS_VAR, THREADS_VAR])
def test_a_bad_count_is_a_usage_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(UsageError, match=name) as caught:
        thread_budget({name: value}, cores=2)
    assert caught.value.hint


def gpu_context(tmp_path: Path) -> BackendContext:
    env = EnvSpec(key="vllm-cu124", path=tmp_path, python_executable=Path(sys.executable),
                  cuda_available=True)
    return BackendContext(home=Home(tmp_path / "home").ensure(), env=env, base_dir=tmp_path,
                          registry=None)  # type: ignore[arg-type]


def model(backend: str, device: str = "cpu", *server_args: str) -> ModelConfig:
    return ModelConfig(model_id="m", base_model="demo://tiny-llama", backend=backend,
                       device=device, dtype="float32", server_args=server_args)


def kernels(spec: object) -> dict[str, str]:
    return {k.setting: k.value for k in spec.kernels}  # type: ignore[attr-defined]


def test_transformers_cpu_server_gets_omp_threads(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path)
    monkeypatch.setenv(SERVERS_VAR, "64")  # more servers than cores: still one thread
    spec = TransformersBackend().launch(model("transformers"), tmp_path, ctx, "127.0.0.1", 1)
    assert spec.env["OMP_NUM_THREADS"] == spec.env["MKL_NUM_THREADS"] == "1"
    assert kernels(spec)["threads"] == "1"  # reported with the row (smoke JSON "kernels")
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's own setting is inherited as is
    spec = TransformersBackend().launch(model("transformers"), tmp_path, ctx, "127.0.0.1", 1)
    assert "OMP_NUM_THREADS" not in spec.env and "threads" not in kernels(spec)


def test_llamacpp_cpu_server_gets_n_threads_and_server_args_still_win(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = context(tmp_path)
    monkeypatch.setenv(THREADS_VAR, "2")
    spec = LlamaCppBackend().launch(model("llamacpp", "cpu", "--n_threads", "7"),
                                    tmp_path / "m.gguf", ctx, "127.0.0.1", 1)
    config = json.loads(Path(spec.argv[spec.argv.index("--config-json") + 1]).read_text())
    assert config["model_settings"] == {"n_threads": 2, "n_threads_batch": 2}
    # the server applies server_args after model_settings (llamacpp_engine.load)
    assert spec.argv[-2:] == ("--n_threads", "7")
    assert kernels(spec)["threads"] == "2"


def test_vllm_cpu_server_is_unbound_with_its_budget(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    ctx = context(tmp_path)
    monkeypatch.setenv(SERVERS_VAR, "2")
    spec = VllmBackend().launch(model("vllm"), folder, ctx, "127.0.0.1", 1)
    threads = kernels(spec)["threads"]
    assert spec.env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    assert spec.env["OMP_NUM_THREADS"] == threads
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1")  # the user's binding stays theirs
    spec = VllmBackend().launch(model("vllm"), folder, ctx, "127.0.0.1", 1)
    assert "VLLM_CPU_OMP_THREADS_BIND" not in spec.env and "threads" not in kernels(spec)


@pytest.mark.parametrize("backend", ["transformers", "llamacpp", "vllm"])
def test_gpu_servers_keep_their_engines_threads(backend: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VAR, "1")
    folder = tmp_path / "model"
    folder.mkdir()
    impl = {"transformers": TransformersBackend, "llamacpp": LlamaCppBackend,
            "vllm": VllmBackend}[backend]()
    spec = impl.launch(model(backend, "cuda"), folder, gpu_context(tmp_path), "127.0.0.1", 1)
    assert "threads" not in kernels(spec)
    assert "OMP_NUM_THREADS" not in spec.env
