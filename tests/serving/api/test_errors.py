"""Every refusal in OpenAI's error shape with the right status and `param`, in-process: validation (400), unknown
models (404), oversized bodies (413), a full queue (429), and the mapping of domain errors done once for all."""
from __future__ import annotations

import asyncio
import threading

import openai
import pytest

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("change, param", [
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"n": 50}, "n"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),  # not in tools
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
    ({"stop": ["a", ""]}, "stop[1]"),  # the list's own error, not "not a string"
    ({"stop": 5}, "stop"),
    ({"logit_bias": {"x": 1}}, "logit_bias.x"),
    ({"model": ""}, "model"),
    # the defect: a bad `stream` reported param None; a bad include_usage reported `include_usage`
    ({"stream": "yes please"}, "stream"),
    ({"stream": True, "stream_options": {"include_usage": "sometimes"}}, "stream_options.include_usage"),
    ({"stream_options": "x"}, "stream_options"),
])
async def test_chat_validation_errors_name_the_param(api, change, param):
    response = await api.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, **change})
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"


async def test_max_tokens_beyond_the_context_is_capped_not_refused(api):
    """Clients send fixed large defaults (Continue 4096, Claude Code 32000): the room left in the context caps it."""
    response = await api.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, "max_tokens": 5000})
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 256  # the tiny model's context length


async def test_a_missing_field_is_named(api):
    response = await api.post("/v1/chat/completions", json={"model": "tiny"})
    assert response.status_code == 400 and error_of(response)["param"] == "messages"


@pytest.mark.parametrize("change, param", [
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"echo": True}, "echo"),
    ({"logprobs": 9}, "logprobs"),
    ({"stream": 3}, "stream"),
])
async def test_completion_validation_errors_name_the_param(api, change, param):
    response = await api.post("/v1/completions", json={"model": "tiny", "prompt": "x", **change})
    assert response.status_code == 400 and error_of(response)["param"] == param


@pytest.mark.parametrize("model", ["nope", "tiny@9", "tiny@prod", "tiny@99999999999999999999", "tiny@²"])
async def test_unknown_models_are_404_everywhere(api, model):
    for path, body in [("/v1/chat/completions", {"model": model, "messages": HI}),
                       ("/v1/completions", {"model": model, "prompt": "x"}),
                       ("/v1/fine_tuning/jobs", {"model": model, "training_file": "file-x"})]:
        response = await api.post(path, json=body)
        assert response.status_code == 404, (path, response.text)
        assert error_of(response)["code"] == "model_not_found" and error_of(response)["param"] == "model"
    response = await api.get(f"/v1/models/{model}")
    assert response.status_code == 404 and error_of(response)["code"] == "model_not_found"


async def test_the_sdk_maps_errors_to_its_exceptions(sdk):
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="nope", messages=HI)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x " * 400}])
    assert caught.value.body["code"] == "context_length_exceeded"


async def test_malformed_json_non_object_bodies_and_unknown_routes(api):
    response = await api.post("/v1/chat/completions", content=b'{"model": "tiny", "messages": [',
                              headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"
    response = await api.post("/v1/chat/completions", json=[1, 2])
    assert response.status_code == 400 and "JSON object" in error_of(response)["message"]
    response = await api.get("/v1/nothing-here")
    assert response.status_code == 404 and error_of(response)["type"] == "invalid_request_error"


async def test_a_body_over_the_limit_is_413(api, pool_and_registry):
    limit = pool_and_registry[2].requests.max_body_bytes
    response = await api.post("/v1/chat/completions", content=b" " * (limit + 1),
                              headers={"content-type": "application/json"})
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


@pytest.mark.parametrize("change, param", [
    ({"hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": [1]}, "hyperparameters"),
    ({"hyperparameters": {"method": "sgd"}}, "hyperparameters.method"),
    ({"method": {"type": "supervised", "supervised": "bad"}}, "method.supervised"),
    ({"method": {"type": "dpo"}}, "method.type"),
    ({"method": {"supervised": {"hyperparameters": {"batch_size": -1}}}}, "method.supervised.hyperparameters.batch_size"),
    ({"suffix": "Not OK!"}, "suffix"),
    ({"probes": [{"prompt": "x", "expect": {}}]}, "probes[0].expect"),
    ({"training_file": "file-missing"}, "training_file"),
])
async def test_fine_tuning_job_bodies_are_typed(api, change, param):
    response = await api.post("/v1/fine_tuning/jobs", json={"model": "tiny", "training_file": "file-x", **change})
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param


async def test_a_full_queue_answers_429_with_retry_after(api, sdk, pool_and_registry):
    """The pool decodes 4 sequences and queues 2 more; with the engine held, a 7th request is refused."""
    pool, *_ = pool_and_registry
    await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=1)  # load it
    engine = pool.loaded["tiny@1"].engine
    engine.step_gate = threading.Event()
    body = {"model": "tiny", "messages": HI, "max_tokens": 3}
    held = [asyncio.create_task(api.post("/v1/chat/completions", json=body)) for _ in range(6)]
    while sum(s.active + s.queued for s in pool.stats()) < 6:
        await asyncio.sleep(0.01)
    refused = await api.post("/v1/chat/completions", json=body)
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert error_of(refused)["type"] == "rate_limit_error" and error_of(refused)["code"] == "queue_full"
    engine.step_gate.set()
    assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 6
