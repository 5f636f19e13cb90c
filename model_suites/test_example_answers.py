"""Example: your own assertions on a model's answers, with OWLLM's fixtures.

Copy this file into your project and change the prompts and assertions.  ``owllm_server``
gives the running server (started once per run, shared by xdist workers); any OpenAI client
works against ``owllm_server["url"] + "/v1"``.  The shipped demo model has random weights, so
these examples assert on behaviour that holds for any model: determinism, limits, stops.
"""

from __future__ import annotations

from typing import Any

import pytest

from owllm import httpclient

pytestmark = [pytest.mark.owllm_model, pytest.mark.slow]


def ask(server: dict[str, Any], prompt: str, **params: Any) -> dict[str, Any]:
    response = httpclient.post(server["url"] + "/v1/chat/completions", timeout=120,
                               headers=httpclient.row_headers(server), json={
        "model": httpclient.served_model(server),
        "messages": [{"role": "user", "content": prompt}], **params})
    assert response.status_code == 200, response.text
    return response.json()


def test_greedy_answers_are_reproducible(owllm_model_id: str,
                                         owllm_server: dict[str, Any]) -> None:
    first = ask(owllm_server, "Name a colour.", temperature=0, max_tokens=8)
    second = ask(owllm_server, "Name a colour.", temperature=0, max_tokens=8)
    assert first["choices"][0]["message"]["content"] == \
        second["choices"][0]["message"]["content"]


def test_max_tokens_is_respected(owllm_model_id: str, owllm_server: dict[str, Any]) -> None:
    answer = ask(owllm_server, "Count to one hundred.", temperature=0,
                 max_tokens=3)
    assert answer["usage"]["completion_tokens"] <= 3
    if answer["usage"]["completion_tokens"] == 3:
        assert answer["choices"][0]["finish_reason"] == "length"
