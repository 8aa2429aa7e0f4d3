"""Tools and structured output in-process, through the official openai SDK and raw HTTP: the wire shapes of tool calls
(whole and streamed), the fallback prompt for a template that does not render tools, tool history, the grammars a
forced call and a response format put on the sequence, and every refusal as a 400 with its param. The scripted
engine answers what a test sets as its reply (its template mentions no tools, so the fallback family applies)."""
from __future__ import annotations

import json

import httpx
import pytest

from serving.api.schemas import responses
from serving.app import create_app
from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import prompt_text, recording_sampling, sse_frames
from tests.serving.api.test_providers import gateway, provider, raw

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture
def pool_and_registry(tmp_path):
    """The scripted model with room for tool definitions in its prompt (one token per character)."""
    return scripted_pool(tmp_path, serve={"aliases": ["default"], "context_length": 8192,
                                          "defaults": {"temperature": 0.7, "max_tokens": 256}})


@pytest.fixture
async def engine(sdk, pool_and_registry):
    """The loaded scripted engine, recording the sampling parameters of every sequence inserted."""
    await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=1)
    return recording_sampling(pool_and_registry[0])



async def test_a_tool_call_whole_has_null_content_and_finish_reason_tool_calls(sdk, engine):
    engine.reply = CALL
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and len(call.id) > 10 and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert reply.usage.completion_tokens == len(CALL)
    responses.ChatCompletion.model_validate(reply.model_dump(exclude_unset=True))
    # the fallback: tools as a Hermes-style system text, since the template does not render them
    prompt = prompt_text(engine)
    assert prompt.startswith("<|im_start|>system\nYou are a function calling AI model")
    assert json.dumps(WEATHER) in prompt and "<tool_call>" in prompt


async def test_streamed_calls_come_as_tool_call_deltas_and_the_markup_never_as_text(sdk, engine):
    engine.reply = f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Rome')}"
    chunks = [c async for c in await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER],
                                                                  stream=True)]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Let me check."
    calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
    assert [call.index for call in calls] == [0, 1] and len({call.id for call in calls}) == 2
    assert [json.loads(call.function.arguments)["city"] for call in calls] == ["Paris", "Rome"]
    assert all(call.type == "function" and call.function.name == "get_weather" for call in calls)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    for chunk in chunks:
        responses.ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True))
    whole = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER])
    assert whole.choices[0].message.content == "Let me check." and len(whole.choices[0].message.tool_calls) == 2
    one = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER], parallel_tool_calls=False)
    [call] = one.choices[0].message.tool_calls  # at most one call: the second is dropped
    assert json.loads(call.function.arguments) == {"city": "Paris"} and one.choices[0].finish_reason == "tool_calls"


async def test_text_that_is_not_a_call_stays_text(sdk, engine):
    engine.reply = "Use <tool_call>not json</tool_call> tags <tool"
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER])
    assert reply.choices[0].message.content == engine.reply and reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "stop"
    engine.reply = REPLY
    plain = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER], n=2)
    assert [c.message.content for c in plain.choices] == [REPLY, REPLY]


async def test_tool_choice_none_offers_no_tools_and_parses_nothing(sdk, engine):
    engine.reply = CALL
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.content == CALL and reply.choices[0].finish_reason == "stop"
    assert "function calling" not in prompt_text(engine) and engine.params[-1].grammar is None


async def test_history_with_a_call_and_its_result_is_rendered_as_text(sdk, engine):
    engine.reply = "It is sunny in Paris."
    history = [{"role": "system", "content": "Be brief."}, *HI,
               {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
                   "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'}]
    reply = await sdk.chat.completions.create(model="tiny", messages=history, tools=[WEATHER])
    assert reply.choices[0].message.content == "It is sunny in Paris." and reply.choices[0].finish_reason == "stop"
    prompt = prompt_text(engine)
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou are a function calling AI model")
    assert ('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            '</tool_call><|im_end|>') in prompt
    assert '<|im_start|>user\n<tool_response>\n{"sky": "sunny"}\n</tool_response><|im_end|>' in prompt


async def test_a_forced_call_is_grammar_constrained_to_that_functions_schema(sdk, engine):
    engine.reply = CALL
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER, TIME],
                                              tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                              parallel_tool_calls=False)
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"
    grammar = engine.params[-1].grammar
    assert grammar and "get_weather" in grammar and "get_time" not in grammar and "<tool_call>" in grammar
    await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER, TIME], tool_choice="required")
    assert "get_weather" in engine.params[-1].grammar and "get_time" in engine.params[-1].grammar
    await sdk.chat.completions.create(model="tiny", messages=HI, tools=[WEATHER], tool_choice="auto")
    assert engine.params[-1].grammar is None


async def test_response_formats_become_grammars(sdk, engine):
    engine.reply = '{"answer": 42}'
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"],
              "additionalProperties": False}
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, response_format={
        "type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    assert json.loads(reply.choices[0].message.content) == {"answer": 42}
    assert "answer" in engine.params[-1].grammar
    await sdk.chat.completions.create(model="tiny", messages=HI, response_format={"type": "json_object"})
    assert engine.params[-1].grammar
    await sdk.chat.completions.create(model="tiny", messages=HI, response_format={"type": "text"})
    assert engine.params[-1].grammar is None


@pytest.mark.parametrize("change, param", [
    ({"tool_choice": {"type": "function", "function": {"name": "nowhere"}}}, "tool_choice"),
    ({"tool_choice": "required", "tools": []}, "tool_choice"),
    ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
    ({"tools": [WEATHER, WEATHER]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER] * 129}, "tools"),
    ({"functions": [WEATHER["function"]]}, "functions"),
    ({"response_format": {"type": "json_schema"}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}},
     "response_format"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "response_format"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]}, "messages[0]"),
])
async def test_refusals_are_400s_naming_the_field(api, change, param):
    body = {"model": "tiny", "messages": HI, "tools": [WEATHER], **change}
    result = await api.post("/v1/chat/completions", json=body)
    assert result.status_code == 400, result.text
    error = result.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


async def test_a_streamed_tool_call_frame_is_openais_shape(api, engine):
    engine.reply = CALL
    result = await api.post("/v1/chat/completions", json={"model": "tiny", "messages": HI, "tools": [WEATHER],
                                                          "stream": True})
    frames = [f for f in sse_frames(result) if f != "[DONE]"]
    [delta] = [f["choices"][0]["delta"] for f in frames if f["choices"][0]["delta"].get("tool_calls")]
    [call] = delta["tool_calls"]
    assert set(call) == {"index", "id", "type", "function"} and call["index"] == 0
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert frames[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_a_cached_answer_replays_its_tool_calls(tmp_path):
    pool, _, config = scripted_pool(tmp_path, serve={"aliases": ["default"], "context_length": 8192},
                                    cache={"enabled": True})
    app = create_app(config, models=pool)
    await pool.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as api:
            body = {"model": "tiny", "messages": HI, "tools": [WEATHER], "temperature": 0}
            await api.post("/v1/chat/completions", json={**body, "max_tokens": 1})
            pool.loaded["tiny@1"].engine.reply = CALL
            first, again = [await api.post("/v1/chat/completions", json=body) for _ in range(2)]
            assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
            assert again.json()["choices"] == first.json()["choices"]  # the same calls, ids included
            assert first.json()["choices"][0]["finish_reason"] == "tool_calls"
            streamed = sse_frames(await api.post("/v1/chat/completions", json={**body, "stream": True}))
            [delta] = [f["choices"][0]["delta"] for f in streamed[:-1] if f["choices"][0]["delta"].get("tool_calls")]
            assert delta["tool_calls"][0]["id"] == first.json()["choices"][0]["message"]["tool_calls"][0]["id"]
    finally:
        await pool.stop()


async def test_providers_refuse_tools_and_formats_rather_than_drop_them(tmp_path):
    upstream = await raw()
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, models=["m"])]) as (client, _):
            history = [*HI, {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"}]
            for change, param in (({"tools": [WEATHER]}, "tools"),
                                  ({"response_format": {"type": "json_object"}}, "response_format"),
                                  ({"messages": history}, "messages")):
                refused = await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI, **change})
                assert refused.status_code == 400, refused.text
                assert refused.json()["error"]["param"] == param
                assert refused.json()["error"]["code"] == "not_supported_by_provider"
            assert upstream.posts == []  # nothing went upstream
    finally:
        await upstream.stop()


async def test_the_sdks_parse_helper_gets_its_pydantic_model_back(sdk, engine):
    from pydantic import BaseModel

    class Forecast(BaseModel):
        city: str
        days: int

    engine.reply = '{"city": "Paris", "days": 3}'
    reply = await sdk.chat.completions.parse(model="tiny", messages=HI, response_format=Forecast)
    assert reply.choices[0].message.parsed == Forecast(city="Paris", days=3)
    assert '"days"' in engine.params[-1].grammar  # the SDK's strict schema became the grammar
