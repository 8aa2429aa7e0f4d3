"""The Responses API in-process, through the official openai SDK and raw HTTP, with the scripted engine: the response
object and its stream events (held to the OpenAPI models), instructions and input items as the prompt, max tokens as
an incomplete response, storage (retrieve, delete, previous_response_id, store: false, per key, retention), function
tools whole, streamed and round-tripped, text.format as a grammar, and every refusal as a 400 with its param."""
from __future__ import annotations

import json

import openai
import pytest

from factory.keys import KeyStore
from serving.api.schemas.responses_api_bodies import ResponseDeleted, ResponseObject, ResponseStreamEvent
from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import prompt_text, recording_sampling

pytestmark = pytest.mark.anyio
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
ORDER = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
         "response.output_text.delta", "response.output_text.done", "response.content_part.done",
         "response.output_item.done", "response.completed"]


@pytest.fixture
def pool_and_registry(tmp_path):
    """The scripted model with room for tool definitions in its prompt (one token per character); 3 stored
    responses at most."""
    return scripted_pool(tmp_path, serve={"aliases": ["default"], "context_length": 8192,
                                          "defaults": {"temperature": 0.7, "max_tokens": 256}},
                         responses={"max_stored": 3})


@pytest.fixture
async def engine(sdk, pool_and_registry):
    """The loaded scripted engine, recording the sampling parameters of every sequence inserted."""
    await sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    return recording_sampling(pool_and_registry[0])



def frames(result) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event, every one held to the documented event model."""
    events, name = [], None
    for line in result.text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
            ResponseStreamEvent.model_validate({"event": name, "data": data})
            events.append((name, json.loads(data)))
    return events


async def test_a_whole_response_is_the_documented_object(api, sdk, engine):
    reply = await sdk.responses.create(model="tiny", input="Say hello")
    assert reply.id.startswith("resp_") and reply.object == "response" and reply.status == "completed"
    assert reply.output_text == REPLY  # the SDK's own convenience, computed from the output items
    [message] = reply.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_") and message.content[0].annotations == []
    prompt = prompt_text(engine)
    assert prompt == "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
    assert reply.usage.input_tokens == len(engine.prompts[-1]) and reply.usage.output_tokens == len(REPLY)
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    assert reply.usage.output_tokens_details.reasoning_tokens == 0 and reply.store is True
    raw = await api.post("/v1/responses", json={"model": "tiny", "input": "Say hello", "temperature": 0.5,
                                                "metadata": {"run": "7"}})
    body = ResponseObject.model_validate(raw.json())
    assert body.temperature == 0.5 and body.metadata == {"run": "7"} and body.tools == []
    assert "output_text" not in raw.json()  # the SDKs compute it; OpenAI's wire object has none
    assert engine.params[-1].temperature == 0.5


async def test_instructions_and_input_items_make_the_prompt(sdk, engine):
    reply = await sdk.responses.create(model="tiny", instructions="Be brief.", input=[
        {"role": "developer", "content": "Answer in French."},  # no `type`: the SDK's EasyInputMessage
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Salut"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},  # dropped
        {"role": "user", "content": "And now?"}])
    assert reply.instructions == "Be brief."
    assert prompt_text(engine) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>system\nAnswer in French."
                                   "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nSalut"
                                   "<|im_end|>\n<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n")


async def test_a_stream_sends_the_typed_events_in_order(api, engine):
    result = await api.post("/v1/responses", json={"model": "tiny", "input": "Say hello", "stream": True})
    assert result.status_code == 200 and result.headers["content-type"].startswith("text/event-stream")
    events = frames(result)
    names = [name for name, _ in events]
    assert [name for i, name in enumerate(names) if i == 0 or name != names[i - 1]] == ORDER
    assert all(data["type"] == name for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert "".join(data["delta"] for name, data in events if name == "response.output_text.delta") == REPLY
    created, final = events[0][1]["response"], events[-1][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == REPLY
    assert final["id"] == created["id"] and final["usage"]["output_tokens"] == len(REPLY)
    added = dict(events)["response.output_item.added"]["item"]
    assert added["status"] == "in_progress" and added["content"] == []
    assert dict(events)["response.output_item.done"]["item"] == final["output"][0]
    stored = await api.get(f"/v1/responses/{final['id']}")
    assert stored.json() == final  # stored before the last event went out


async def test_the_sdk_streams_and_its_final_response_is_whole(sdk, engine):
    stream = await sdk.responses.create(model="tiny", input="Say hello", stream=True)
    kinds, final = [], None
    async for event in stream:
        kinds.append(event.type)
        if event.type == "response.completed":
            final = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == REPLY


async def test_max_output_tokens_ends_an_incomplete_response(api, sdk, engine):
    reply = await sdk.responses.create(model="tiny", input="Say hello", max_output_tokens=5)
    assert reply.status == "incomplete" and reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == REPLY[:5] and reply.output[0].status == "incomplete"
    assert reply.max_output_tokens == 5
    events = frames(await api.post("/v1/responses", json={"model": "tiny", "input": "Hi", "stream": True,
                                                          "max_output_tokens": 5}))
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_previous_response_id_continues_the_conversation(sdk, engine):
    first = await sdk.responses.create(model="tiny", instructions="Be brief.", input="My name is Ada.")
    second = await sdk.responses.create(model="tiny", previous_response_id=first.id, input="What is my name?")
    assert second.previous_response_id == first.id
    # the previous input and output come first; its instructions are not carried over
    assert prompt_text(engine) == ("<|im_start|>user\nMy name is Ada.<|im_end|>\n<|im_start|>assistant\n" + REPLY
                                   + "<|im_end|>\n<|im_start|>user\nWhat is my name?<|im_end|>\n"
                                   "<|im_start|>assistant\n")
    third = await sdk.responses.create(model="tiny", previous_response_id=second.id, input="Again?")
    assert prompt_text(engine).count(REPLY) == 2 and third.status == "completed"


async def test_retrieve_and_delete(api, sdk, engine):
    reply = await sdk.responses.create(model="tiny", input="Say hello")
    again = await sdk.responses.retrieve(reply.id)
    assert again.model_dump() == reply.model_dump()
    deleted = await api.delete(f"/v1/responses/{reply.id}")
    assert deleted.json() == {"id": reply.id, "object": "response", "deleted": True}
    ResponseDeleted.model_validate(deleted.json())
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.retrieve(reply.id)
    assert missing.value.body["message"] == f"Response with id '{reply.id}' not found."
    assert missing.value.body["type"] == "invalid_request_error"
    gone = await api.delete(f"/v1/responses/{reply.id}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found"
    with pytest.raises(openai.NotFoundError) as unknown:
        await sdk.responses.create(model="tiny", previous_response_id=reply.id, input="hi")
    assert unknown.value.body["param"] == "previous_response_id"
    assert unknown.value.body["code"] == "previous_response_not_found"


async def test_store_false_keeps_nothing(sdk, engine):
    reply = await sdk.responses.create(model="tiny", input="Say hello", store=False)
    assert reply.store is False and reply.output_text == REPLY
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(reply.id)


async def test_retention_keeps_the_newest(sdk, engine):
    ids = [(await sdk.responses.create(model="tiny", input=f"n{i}")).id for i in range(4)]  # max_stored: 3
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(ids[0])
    for kept in ids[1:]:
        assert (await sdk.responses.retrieve(kept)).id == kept


async def test_a_stored_response_belongs_to_its_key(api, pool_and_registry, engine):
    _, _, config = pool_and_registry
    keys = KeyStore(config.root)
    ada, bob = keys.create("ada", "inference"), keys.create("bob", "inference")
    as_ada, as_bob = {"Authorization": f"Bearer {ada}"}, {"Authorization": f"Bearer {bob}"}
    made = (await api.post("/v1/responses", json={"model": "tiny", "input": "hi"}, headers=as_ada)).json()
    assert (await api.get(f"/v1/responses/{made['id']}", headers=as_ada)).status_code == 200
    for call in (api.get(f"/v1/responses/{made['id']}", headers=as_bob),
                 api.delete(f"/v1/responses/{made['id']}", headers=as_bob),
                 api.post("/v1/responses", json={"model": "tiny", "input": "hi", "previous_response_id": made["id"]},
                          headers=as_bob)):
        assert (await call).status_code == 404
    assert (await api.get(f"/v1/responses/{made['id']}", headers=as_ada)).status_code == 200


async def test_a_function_call_is_an_output_item_and_its_output_continues(sdk, engine):
    engine.reply = CALL
    reply = await sdk.responses.create(model="tiny", input="Weather in Paris?", tools=[WEATHER])
    [call] = reply.output
    assert call.type == "function_call" and call.status == "completed" and call.name == "get_weather"
    assert call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"} and reply.output_text == ""
    assert reply.tools[0].name == "get_weather" and reply.tools[0].strict is True
    prompt = prompt_text(engine)  # the fallback: tools as a Hermes-style system text
    assert prompt.startswith("<|im_start|>system\nYou are a function calling AI model")
    assert '"name": "get_weather"' in prompt and '"required": ["city"]' in prompt
    engine.reply = "It is sunny."
    answer = await sdk.responses.create(model="tiny", previous_response_id=reply.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky": "sunny"}'}])
    assert answer.output_text == "It is sunny."
    prompt = prompt_text(engine)  # the template renders no tools: calls and results as Hermes-style markup
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
    assert '<tool_response>\n{"sky": "sunny"}\n</tool_response>' in prompt


async def test_a_streamed_function_call_comes_whole_after_the_text_before_it(api, engine):
    engine.reply = f"Let me check.\n{CALL}"
    events = frames(await api.post("/v1/responses", json={"model": "tiny", "input": "Paris?", "tools": [WEATHER],
                                                          "stream": True}))
    names = [name for name, _ in events if name != "response.output_text.delta"]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"]
    final = events[-1][1]["response"]
    message, call = final["output"]
    assert message["content"][0]["text"].strip() == "Let me check." and call["type"] == "function_call"
    arguments = [data for name, data in events if name.startswith("response.function_call_arguments")]
    assert {data["item_id"] for data in arguments} == {call["id"]}
    assert json.loads(arguments[0]["delta"]) == json.loads(arguments[1]["arguments"]) == {"city": "Paris"}
    assert [data["output_index"] for name, data in events if name == "response.output_item.done"] == [0, 1]


async def test_a_forced_call_and_a_json_schema_format_constrain_the_sequence(sdk, engine):
    engine.reply = CALL
    await sdk.responses.create(model="tiny", input="Paris?", tools=[WEATHER],
                               tool_choice={"type": "function", "name": "get_weather"})
    assert engine.params[-1].grammar is not None
    engine.reply = '{"answer": 4}'
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    reply = await sdk.responses.create(model="tiny", input="2 + 2?", text={"format": {
        "type": "json_schema", "name": "sum", "schema": schema, "strict": True}})
    assert json.loads(reply.output_text) == {"answer": 4} and engine.params[-1].grammar is not None
    assert reply.text.format.type == "json_schema" and reply.text.format.name == "sum"
    plain = await sdk.responses.create(model="tiny", input="2 + 2?")
    assert engine.params[-1].grammar is None and plain.text.format.type == "text"


@pytest.mark.parametrize("body, param, words", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "only function tools"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]},
     "input[0].content[0].type", "only text content"),
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0]",
     "'computer_call_output' are not supported"),
    ({"input": [{"type": ["message"], "role": "user", "content": "hi"}]}, "input[0]", "of type ['message']"),
    ({"background": True}, "background", "background responses"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"max_tool_calls": 2}, "max_tool_calls", "not supported"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice", "not in tools"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format", "needs a name and a schema"),
    ({"temperature": 3}, "temperature", "less than or equal to 2"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "bad name!", "arguments": "{}"}]},
     "input[0].name", "pattern"),
])
async def test_refusals_are_400s_that_name_the_field(api, body, param, words):
    result = await api.post("/v1/responses", json={"model": "tiny", "input": "hi", **body})
    assert result.status_code == 400, result.text
    error = result.json()["error"]
    assert error["param"] == param and words in error["message"], error


async def test_nothing_to_answer_is_a_400(api):
    for items in ([], [{"type": "reasoning", "id": "rs_1", "summary": []}]):
        result = await api.post("/v1/responses", json={"model": "tiny", "input": items})
        assert result.status_code == 400 and result.json()["error"]["param"] == "input"
    with_instructions = await api.post("/v1/responses", json={"model": "tiny", "input": [], "instructions": "Hi."})
    assert with_instructions.status_code == 200


async def test_an_unknown_model_is_a_404(api):
    result = await api.post("/v1/responses", json={"model": "nope", "input": "hi"})
    assert result.status_code == 404 and result.json()["error"]["code"] == "model_not_found"


async def test_harmless_extras_are_accepted(sdk, engine):
    reply = await sdk.responses.create(model="tiny", input="hi", reasoning={"effort": "low", "summary": "auto"},
                                       include=["reasoning.encrypted_content"], truncation="auto", user="u1",
                                       extra_body={"prompt_cache_key": "k", "service_tier": "auto"})
    assert reply.status == "completed" and reply.truncation == "auto"


async def test_a_client_kept_history_with_calls_makes_the_prompt(sdk, engine):
    """What Codex CLI sends with `store: false`: the whole history each time, its calls and their outputs as items."""
    await sdk.responses.create(model="tiny", store=False, tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]}])
    prompt = prompt_text(engine)
    # one assistant turn: its text, then both calls
    assert ('<|im_start|>assistant\nChecking.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            '\n</tool_call>\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
            '<|im_end|>') in prompt
    assert prompt.index("<tool_response>\nsunny\n") < prompt.index("<tool_response>\nrain\n")


async def test_an_item_missing_a_field_is_refused_in_words(api):
    result = await api.post("/v1/responses", json={"model": "tiny", "input": [
        {"type": "function_call", "call_id": "c", "name": "f"}]})
    assert result.status_code == 400
    assert result.json()["error"]["message"] == "input[0]: a function_call item needs arguments"


def test_retention_drops_what_is_too_old(tmp_path, monkeypatch):
    from serving.api import stored_responses

    store = stored_responses.ResponseStore(tmp_path, max_age_days=1, max_stored=100)
    clock = [1_000_000.0]
    monkeypatch.setattr(stored_responses.time, "time", lambda: clock[0])
    store.save("", {"id": "resp_old", "output": []}, [])
    clock[0] += 86400 + 1
    assert store.get("", "resp_old") is None  # aged out: no longer readable
    store.save("", {"id": "resp_new", "output": []}, [])  # a write prunes it
    assert store.count() == 1 and store.get("", "resp_new").response == {"id": "resp_new", "output": []}
    assert store.get("someone", "resp_new") is None and not store.delete("someone", "resp_new")


async def test_the_models_refusals_name_the_responses_fields(api):
    schema = await api.post("/v1/responses", json={"model": "tiny", "input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"type": "nope"}}}})
    assert schema.status_code == 400 and schema.json()["error"]["param"] == "text.format"
    too_long = await api.post("/v1/responses", json={"model": "tiny", "input": "x " * 5000})
    error = too_long.json()["error"]
    assert too_long.status_code == 400 and error["param"] == "input", error
    assert error["code"] == "context_length_exceeded"
    capped = await api.post("/v1/responses", json={"model": "tiny", "input": "hi", "max_output_tokens": 100000})
    assert capped.status_code == 200, capped.text  # capped by the room left in the context, as on chat


async def test_an_engine_failure_ends_a_stream_with_response_failed_and_stores_nothing(api, engine):
    def refuse(prompt, params):
        raise RuntimeError("out of cells")

    engine.insert = refuse
    events = frames(await api.post("/v1/responses", json={"model": "tiny", "input": "hi", "stream": True}))
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    error, failed = events[2][1], events[3][1]["response"]
    assert error["code"] == "server_error" and "out of cells" in error["message"]
    assert failed["status"] == "failed" and failed["error"]["message"] == error["message"]
    assert (await api.get(f"/v1/responses/{failed['id']}")).status_code == 404
    whole = await api.post("/v1/responses", json={"model": "tiny", "input": "hi"})
    assert whole.status_code == 500 and whole.json()["error"]["type"] == "server_error"
