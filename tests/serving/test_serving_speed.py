"""The prefix cache and speculative decoding through a real gunicorn server on llama.cpp: usage reports the cached
prompt tokens, greedy answers do not change, /metrics counts reuse and drafts (multiprocess mode), and `serve.draft`
loads another registry model as the draft (a missing one is a clear 503)."""
from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.serving.conftest import SERVE, start_server, stop_server

SYSTEM = {"role": "system", "content": "You answer questions about files and paths, briefly and exactly. " * 8}


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory, tiny_model):
    from formats.gguf.export import export_gguf

    directory = tmp_path_factory.mktemp("draft") / "gguf-q8_0"
    directory.mkdir()
    export_gguf(tiny_model, directory / "model-q8_0.gguf", "q8_0")
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_gguf, tiny_q8):
    running = start_server(tmp_path_factory.mktemp("speed"), tiny_gguf, "gguf-f16",
                           serve={**SERVE, "prompt_lookup": True}, FACTORY_SERVE_MODELS_MAX_BATCH="4")
    running.registry.publish("tiny-draft", {"gguf-q8_0": tiny_q8}, serve=SERVE)
    running.registry.publish("tiny-plain", {"gguf-f16": tiny_gguf}, serve={**SERVE, "prefix_cache": False})
    running.registry.publish("tiny-drafted", {"gguf-f16": tiny_gguf}, serve={**SERVE, "draft": "tiny-draft@1"})
    running.registry.publish("tiny-broken", {"gguf-f16": tiny_gguf}, serve={**SERVE, "draft": "nope"})
    deadline = time.monotonic() + 30
    while "tiny-broken" not in [m.id for m in running.client.models.list()] and time.monotonic() < deadline:
        time.sleep(0.2)
    yield running
    stop_server(running.process)


def ask(server, model: str, question: str, max_tokens: int = 32, **kwargs):
    return server.client.chat.completions.create(model=model, messages=[SYSTEM, {"role": "user", "content": question}],
                                                 temperature=0, max_tokens=max_tokens, **kwargs)


def metric_sum(server, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.split()[-1])
    return total


def test_a_repeated_system_prompt_is_reported_cached_and_the_answer_does_not_change(server):
    questions = ["Where is the file?", "What is a path?", "Where is the file?"]
    answers = [ask(server, "tiny", q) for q in questions]
    plain = [ask(server, "tiny-plain", q) for q in questions]
    assert [a.choices[0].message.content for a in answers] == [p.choices[0].message.content for p in plain]
    assert all(p.usage.prompt_tokens_details.cached_tokens == 0 for p in plain)
    cached = [a.usage.prompt_tokens_details.cached_tokens for a in answers]
    assert cached[1] > 100 and cached[2] == answers[2].usage.prompt_tokens - 1
    chunks = list(ask(server, "tiny", "What is a path?", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == chunks[-1].usage.prompt_tokens - 1
    assert metric_sum(server, "factory_cached_prompt_tokens_total", model="tiny@1") >= sum(cached)


def test_prompt_lookup_and_a_draft_model_answer_as_the_plain_model_and_count_drafts(server):
    repeat = "Repeat exactly: the path, the file, the path, the file, the path, the file."
    plain = ask(server, "tiny-plain", repeat, max_tokens=64).choices[0].message.content
    assert ask(server, "tiny", repeat, max_tokens=64).choices[0].message.content == plain
    assert ask(server, "tiny-drafted", repeat, max_tokens=64).choices[0].message.content == plain
    drafted = metric_sum(server, "factory_speculative_drafted_tokens_total", model="tiny@1", method="ngram")
    accepted = metric_sum(server, "factory_speculative_accepted_tokens_total", model="tiny@1", method="ngram")
    assert drafted > 0 and 0 < accepted <= drafted
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'factory_speculative_drafted_tokens_total\{.*model="tiny@1"', text)


def test_a_draft_that_is_not_in_the_registry_is_a_503_naming_it(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
        "model": "tiny-broken", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 503
    assert "draft model 'nope' (serve.draft) is not in the registry" in response.json()["error"]["message"]
