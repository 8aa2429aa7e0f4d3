"""Anthropic's Messages API in-process, through the official anthropic SDK and raw HTTP, on the scripted engine
(whose reply a test sets; its template mentions no tools, so tool calls use the Hermes-style fallback): whole and
streamed messages, system prompts, stop sequences, tool_use and tool_result round trips, count_tokens against
the prompt actually sent, and every error in Anthropic's shape, middleware's included."""
from __future__ import annotations

import json

import anthropic
import httpx
import httpx2
import jsonschema
import pytest

from factory.keys import KeyStore
from serving.api.schemas.anthropic_bodies import MessageStreamEvent
from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import prompt_text, recording_sampling
from tests.serving.api.test_openapi import schema_for

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CLOCK = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
EVENTS = ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_stop",
          "message_delta", "message_stop"]


@pytest.fixture
def pool_and_registry(tmp_path):
    """The scripted model with room for tool definitions in its prompt (one token per character)."""
    return scripted_pool(tmp_path, serve={"aliases": ["default"], "context_length": 8192,
                                          "defaults": {"temperature": 0.7, "max_tokens": 256}})


@pytest.fixture
async def client(api, pool_and_registry):
    """The anthropic SDK over the same app, in-process (the SDK speaks httpx2)."""
    transport = httpx2.ASGITransport(app=api._transport.app)
    async with httpx2.AsyncClient(transport=transport, base_url="http://in-process") as http:
        yield anthropic.AsyncAnthropic(base_url="http://in-process", api_key="unused", http_client=http,
                                       max_retries=0)


@pytest.fixture
async def engine(client, pool_and_registry):
    """The loaded scripted engine, recording every sequence's sampling parameters."""
    await client.messages.create(model="tiny", max_tokens=1, messages=HI)
    return recording_sampling(pool_and_registry[0])


@pytest.fixture
async def document(api):
    return (await api.get("/openapi.json")).json()


def conforms(document: dict, path: str, response: httpx.Response) -> None:
    """The response's status and content type are documented for POST `path`, and its body (each event's data,
    when streamed) holds to the document's schema."""
    media_type = response.headers["content-type"].split(";")[0]
    schema = schema_for(document, "POST", path, response.status_code, media_type)
    if media_type == "text/event-stream":
        assert schema["$ref"].endswith("/MessageStreamEvent")
        events = named_events(response.text)
        assert events and events[-1][0] in ("message_stop", "error")
        for name, data in events:  # `data` held to the event model exactly, as schemathesis does live
            MessageStreamEvent.model_validate({"event": name, "data": json.dumps(data)})
    else:
        jsonschema.Draft202012Validator(schema).validate(response.json())



def named_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event of a raw response body."""
    events, name = [], None
    for line in text.splitlines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            events.append((name, json.loads(line.removeprefix("data: "))))
    return events


# ---------------------------------------------------------------- messages


async def test_a_whole_message(client, engine):
    message = await client.messages.create(model="tiny", max_tokens=64, messages=HI)
    assert message.id.startswith("msg_") and message.type == "message" and message.role == "assistant"
    assert message.model == "tiny" and message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == len(REPLY)
    counted = await client.messages.count_tokens(model="tiny", messages=HI)
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == counted.input_tokens
    assert counted.input_tokens == len(engine.prompts[-1])
    assert engine.params[-1].max_tokens == 64 and engine.params[-1].stop == []


async def test_system_as_text_and_as_blocks_comes_first_in_the_prompt(client, engine):
    await client.messages.create(model="tiny", max_tokens=4, system="Answer briefly.", messages=HI)
    assert prompt_text(engine).startswith("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nWhat")
    await client.messages.create(model="tiny", max_tokens=4, messages=HI, system=[
        {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}}, {"type": "text", "text": "Two."}])
    assert prompt_text(engine).startswith("<|im_start|>system\nOne.\n\nTwo.<|im_end|>")


async def test_content_blocks_and_sampling_reach_the_engine(client, engine):
    # this SDK no longer names temperature and top_p; the API takes them
    await client.messages.create(model="tiny", max_tokens=5, extra_body={"temperature": 0.2, "top_p": 0.5},
                                 metadata={"user_id": "u"},
                                 messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]},
                                           {"role": "assistant", "content": "c"},
                                           {"role": "user", "content": "d"}])
    assert "<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\nc<|im_end|>\n<|im_start|>user\nd" in \
        prompt_text(engine)
    params = engine.params[-1]
    assert (params.max_tokens, params.temperature, params.top_p) == (5, 0.2, 0.5)


async def test_stop_sequences_say_which_one_matched(client, engine):
    message = await client.messages.create(model="tiny", max_tokens=64, messages=HI,
                                           stop_sequences=["engine", "scripted", "zzz"])
    assert message.content[0].text == "Hello from the "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "scripted"
    async with client.messages.stream(model="tiny", max_tokens=64, messages=HI, stop_sequences=["from"]) as s:
        final = await s.get_final_message()
    assert final.content[0].text == "Hello " and (final.stop_reason, final.stop_sequence) == ("stop_sequence", "from")
    assert (await client.messages.create(model="tiny", max_tokens=64, messages=HI, stop_sequences=["zzz"])
            ).stop_reason == "end_turn"


async def test_max_tokens_ends_with_max_tokens(client, engine):
    message = await client.messages.create(model="tiny", max_tokens=3, messages=HI)
    assert message.content[0].text == REPLY[:3] and message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3


async def test_streamed_with_the_sdk_helper_and_with_stream_true(client, engine):
    async with client.messages.stream(model="tiny", max_tokens=64, messages=HI) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == REPLY and len(pieces) == len(REPLY)
    assert final.content[0].text == REPLY and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(REPLY) and final.usage.input_tokens > 0
    raw = await client.messages.create(model="tiny", max_tokens=64, messages=HI, stream=True)
    kinds = [event.type async for event in raw]
    # the SDK passes pings by
    assert kinds == ["message_start", "content_block_start"] + ["content_block_delta"] * len(REPLY) + EVENTS[4:]


async def test_the_raw_event_stream(api, engine, document):
    response = await api.post("/v1/messages", json={"model": "tiny", "max_tokens": 64, "messages": HI,
                                                    "stream": True})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = named_events(response.text)
    assert all(name == data["type"] for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["output_tokens"] == 0
    assert events[2][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta") == REPLY
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == len(REPLY)
    conforms(document, "/v1/messages", response)
    conforms(document, "/v1/messages", await api.post("/v1/messages", json={"model": "tiny", "max_tokens": 4,
                                                                            "messages": HI}))
    counted = await api.post("/v1/messages/count_tokens", json={"model": "tiny", "messages": HI},
                             headers={"anthropic-version": "1999-01-01"})  # any version is accepted
    assert counted.json() == {"input_tokens": len(engine.prompts[-1])}
    conforms(document, "/v1/messages/count_tokens", counted)


# ---------------------------------------------------------------- tools


async def test_a_tool_use_whole(client, engine):
    engine.reply = CALL
    message = await client.messages.create(model="tiny", max_tokens=256, messages=HI, tools=[WEATHER, CLOCK])
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.id.startswith("toolu_") and call.name == "get_weather" and call.input == {"city": "Paris"}
    assert "get_weather" in prompt_text(engine) and "get_time" in prompt_text(engine)


async def test_text_then_a_tool_use_streamed(client, engine, api, document):
    engine.reply = "Let me look.\n" + CALL
    async with client.messages.stream(model="tiny", max_tokens=256, messages=HI, tools=[WEATHER]) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[0].text.strip() == "Let me look." and final.content[1].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    response = await api.post("/v1/messages", json={"model": "tiny", "max_tokens": 256, "messages": HI,
                                                    "tools": [WEATHER], "stream": True})
    events = named_events(response.text)
    starts = [data for name, data in events if name == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"] and starts[1]["index"] == 1
    assert starts[1]["content_block"]["input"] == {}
    [json_delta] = [data["delta"] for name, data in events if data.get("delta", {}).get("type") == "input_json_delta"]
    assert json.loads(json_delta["partial_json"]) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    conforms(document, "/v1/messages", response)


async def test_a_tool_result_round_trip_reaches_the_prompt(client, engine):
    engine.reply = "It is sunny in Paris."
    history = HI + [
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_01", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "Sunny, 24C"}]},
            {"type": "text", "text": "Thanks, summarise."}]}]
    message = await client.messages.create(model="tiny", max_tokens=256, messages=history, tools=[WEATHER])
    assert message.content[0].text == "It is sunny in Paris." and message.stop_reason == "end_turn"
    prompt = prompt_text(engine)
    assert '"city": "Paris"' in prompt and "Sunny, 24C" in prompt
    assert prompt.index("Sunny, 24C") < prompt.index("Thanks, summarise.")
    failed = [{**history[2], "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "is_error": True,
                                          "content": "city not found"}]}]
    await client.messages.create(model="tiny", max_tokens=8, messages=history[:2] + failed, tools=[WEATHER])
    assert "Error: city not found" in prompt_text(engine)


async def test_tool_choice_any_and_tool_force_a_call(client, engine):
    engine.reply = CALL
    await client.messages.create(model="tiny", max_tokens=256, messages=HI, tools=[WEATHER, CLOCK])
    assert engine.params[-1].grammar is None  # auto: free text
    await client.messages.create(model="tiny", max_tokens=256, messages=HI, tools=[WEATHER, CLOCK],
                                 tool_choice={"type": "any"})
    forced_any = engine.params[-1].grammar
    await client.messages.create(model="tiny", max_tokens=256, messages=HI, tools=[WEATHER, CLOCK],
                                 tool_choice={"type": "tool", "name": "get_time"})
    forced_one = engine.params[-1].grammar
    assert forced_any and forced_one and "get_weather" in forced_any and "get_weather" not in forced_one
    await client.messages.create(model="tiny", max_tokens=8, messages=HI, tools=[WEATHER],
                                 tool_choice={"type": "none"})
    assert "get_weather" not in prompt_text(engine)


async def test_structured_output_puts_a_json_grammar_on_the_sequence(client, engine):
    engine.reply = '{"city": "Paris"}'
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    message = await client.messages.create(model="tiny", max_tokens=64, messages=HI,
                                           output_config={"format": {"type": "json_schema", "schema": schema}})
    assert json.loads(message.content[0].text) == {"city": "Paris"}
    assert engine.params[-1].grammar and "city" in engine.params[-1].grammar


async def test_count_tokens_counts_tools_and_system(client, engine):
    bare = (await client.messages.count_tokens(model="tiny", messages=HI)).input_tokens
    system = (await client.messages.count_tokens(model="tiny", messages=HI, system="Be brief.")).input_tokens
    tools = (await client.messages.count_tokens(model="tiny", messages=HI, tools=[WEATHER])).input_tokens
    assert bare < system < bare + 40 and tools > bare + 50
    await client.messages.create(model="tiny", max_tokens=1, messages=HI, tools=[WEATHER])
    assert len(engine.prompts[-1]) == tools


# ---------------------------------------------------------------- errors


def anthropic_shaped(response: httpx.Response, status: int, kind: str, words: str = "") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body) == {"type", "error"} and body["error"]["type"] == kind
    assert words in body["error"]["message"], body
    return body["error"]["message"]


@pytest.mark.parametrize("body, words", [
    ({"model": "tiny", "messages": HI}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"model": "tiny", "max_tokens": 4, "messages": []}, "messages"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
     "image input is not supported"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "'document' content blocks"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "top_k": 5}, "top_k is not supported"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "temperature": 1.5}, "temperature"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 1024}},
     "thinking is not supported"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "tools": [{"type": "web_search_20250305",
                                                                   "name": "web_search"}]}, "server tools"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "tools": [WEATHER],
      "tool_choice": {"type": "tool", "name": "nope"}}, "'nope' is not in tools"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "tool_choice": {"type": "any"}}, "'any' needs tools"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "tools": [WEATHER, WEATHER]}, "unique"),
    ({"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}, "belong to assistant messages"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI, "stop_sequences": [""]}, "stop_sequences[0]"),
    ({"model": "tiny", "max_tokens": 64, "messages": [{"role": "user", "content": "x " * 5000}]}, "context length"),
    ({"model": "tiny", "max_tokens": 4, "messages": HI + [{"role": "assistant", "content": "The"}]}, "prefill"),
])
async def test_invalid_requests_are_400_in_anthropic_shape(api, body, words, document):
    response = await api.post("/v1/messages", json=body)
    anthropic_shaped(response, 400, "invalid_request_error", words)
    conforms(document, "/v1/messages", response)


async def test_not_found_malformed_and_wrong_method(api, client, document):
    response = await api.post("/v1/messages", json={"model": "nope", "max_tokens": 4, "messages": HI})
    anthropic_shaped(response, 404, "not_found_error", "'nope'")
    conforms(document, "/v1/messages", response)
    anthropic_shaped(await api.post("/v1/messages/count_tokens", json={"model": "nope", "messages": HI}), 404,
                     "not_found_error")
    anthropic_shaped(await api.post("/v1/messages", content=b"{nope"), 400, "invalid_request_error", "JSON")
    anthropic_shaped(await api.post("/v1/messages/batches", json={}), 404, "not_found_error")
    anthropic_shaped(await api.get("/v1/messages"), 405, "invalid_request_error")
    with pytest.raises(anthropic.NotFoundError) as raised:
        await client.messages.create(model="nope", max_tokens=4, messages=HI)
    assert raised.value.body["error"]["type"] == "not_found_error"
    # the OpenAI routes keep OpenAI's shape
    openai_body = (await api.post("/v1/chat/completions", json={"model": "nope", "messages": HI})).json()
    assert openai_body["error"]["code"] == "model_not_found"


async def test_bodies_too_large_are_413_in_anthropic_shape(api, pool_and_registry):
    limit = pool_and_registry[2].requests.max_body_bytes
    anthropic_shaped(await api.post("/v1/messages", content=b"x" * (limit + 1)), 413, "request_too_large", "limit")

    async def chunks():
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536

    chunked = await api.post("/v1/messages/count_tokens", content=chunks())  # counted as it arrives
    anthropic_shaped(chunked, 413, "request_too_large", "limit")


async def test_auth_and_rate_limit_errors_in_anthropic_shape(api, client, pool_and_registry):
    keys = KeyStore(pool_and_registry[2].root)
    secret = keys.create("claude-code", "inference", rpm=1)
    tuner = keys.create("tuner", "fine-tune")
    anthropic_shaped(await api.post("/v1/messages", json={}), 401, "authentication_error", "API key")
    with pytest.raises(anthropic.AuthenticationError) as raised:
        await client.messages.create(model="tiny", max_tokens=4, messages=HI)
    assert raised.value.status_code == 401 and raised.value.body["error"]["type"] == "authentication_error"
    denied = await api.post("/v1/messages/count_tokens", headers={"x-api-key": tuner},
                            json={"model": "tiny", "messages": HI})
    anthropic_shaped(denied, 403, "permission_error", "scope")
    allowed = client.with_options(api_key=secret)
    assert (await allowed.messages.create(model="tiny", max_tokens=2, messages=HI)).usage.output_tokens == 2
    with pytest.raises(anthropic.RateLimitError) as limited:
        await allowed.messages.create(model="tiny", max_tokens=2, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert int(limited.value.response.headers["retry-after"]) > 0
