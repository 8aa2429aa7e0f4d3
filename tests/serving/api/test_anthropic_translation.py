"""Anthropic's Messages API bodies translated into the inference contract (GenerateRequest): tool_choice, the tool
turn's history in OpenAI's shape, and a remote model's refusal to count tokens."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from serving.api.schemas.anthropic import CreateMessage
from serving.inference.remote import RemoteModel
from serving.inference.types import GenerateRequest, InvalidRequest
from tests.serving.api.test_anthropic import CLOCK, HI, WEATHER


@pytest.mark.parametrize("choice, translated, parallel", [
    (None, "auto", True), ({"type": "auto"}, "auto", True), ({"type": "any"}, "required", True),
    ({"type": "tool", "name": "get_time"}, "get_time", True), ({"type": "none"}, "none", True),
    ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
])
def test_tool_choice_translates_to_the_inference_contract(choice, translated, parallel):
    body = {"model": "tiny", "max_tokens": 4, "messages": HI, "tools": [WEATHER, CLOCK]}
    request = CreateMessage.model_validate(body | ({"tool_choice": choice} if choice else {})).generate_request()
    assert (request.tool_choice, request.parallel_tool_calls) == (translated, parallel)
    assert [tool.name for tool in request.tools] == ["get_weather", "get_time"]
    assert request.tools[0].parameters == WEATHER["input_schema"] and request.tools[0].description


def test_a_tool_turn_translates_to_openai_shaped_history():
    history = CreateMessage.model_validate({"model": "tiny", "max_tokens": 4, "system": "S", "messages": HI + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}},
                                          {"type": "tool_use", "id": "toolu_2", "name": "get_weather",
                                           "input": {"city": "Rome"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon"},
                                     {"type": "tool_result", "tool_use_id": "toolu_2", "content": [
                                         {"type": "text", "text": "rain"}], "is_error": False}]}]}
    ).generate_request().messages
    assert history == [
        {"role": "system", "content": "S"}, HI[0],
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather",
                                                               "arguments": '{"city": "Rome"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "noon"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "rain"}]


@pytest.mark.anyio
async def test_a_provider_model_refuses_to_count_tokens():
    remote = RemoteModel(SimpleNamespace(name="upstream"), "some-model")
    with pytest.raises(InvalidRequest, match="cannot count its tokens"):
        await remote.count_tokens(GenerateRequest(messages=HI))
