"""Request bodies exactly as two editor agents send them, posted raw (no SDK to tidy them up), in-process.

- Cline's "OpenAI Compatible" provider (the openai SDK in the extension, src/core/api/providers/openai.ts): a system
  message as a string, user turns as arrays of `{type: "text"}` parts (`<task>`, `<environment_details>`),
  `temperature: 0`, `stream: true`, `stream_options: {include_usage: true}`, native `tools` with no `tool_choice`,
  and assistant turns that may carry extra fields (`reasoning_details`).
- Continue (core/llm/llms/OpenAI.ts): chat with every sampling field spelled out and its stop words unsliced for
  hosts other than OpenAI's; autocomplete through the legacy /v1/completions with the FIM prompt written by its own
  template (the markers in `prompt` are meant) and a long stop list (the template's end tokens, blank lines,
  `/src/`, ``` and the language's stop words); /v1/models read for its ids only.
"""
from __future__ import annotations

import json

import pytest

from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import sse_frames

pytestmark = pytest.mark.anyio


@pytest.fixture
def pool_and_registry(tmp_path):
    """The scripted model with an 8k context: its tokens are characters, and editors send long prompts and ask for
    Continue's default of 4,096 new tokens."""
    return scripted_pool(tmp_path, serve={"aliases": ["default"], "context_length": 8192})

CLINE_SYSTEM = "You are Cline, a highly skilled software engineer with extensive knowledge in many languages."
CLINE_TASK = [{"type": "text", "text": "<task>\nAdd a docstring to add() in math_utils.py\n</task>"},
              {"type": "text", "text": "<environment_details>\n# Current Working Directory\n/home/dev/project\n"
                                       "</environment_details>"}]
CLINE_BODY = {"model": "tiny", "messages": [{"role": "system", "content": CLINE_SYSTEM},
                                            {"role": "user", "content": CLINE_TASK}],
              "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

CONTINUE_CHAT = {"messages": [{"role": "system", "content": "Always answer in Markdown."},
                              {"role": "user", "content": "What does this do?\n\n```python\ndef f(): ...\n```"}],
                 "model": "tiny", "max_tokens": 4096,  # Continue's default maxTokens
                 "temperature": 0.5, "top_p": 0.9, "frequency_penalty": 0,
                 "presence_penalty": 0, "stream": True,
                 "stop": ["<|im_end|>", "<|endoftext|>", "\n\n\n\n\n", "[INST]", "<</SYS>>", "###"]}

FIM_STOPS = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<file_sep>", "<|endoftext|>", "\n\n", "\r\n\r\n",
             "/src/", "#- coding: utf-8", "```", "\ndef", "\nclass", "\n\"\"\"#"]
CONTINUE_AUTOCOMPLETE = {"model": "tiny", "prompt": "<fim_prefix>def add(a, b):\n    <fim_suffix>\n<fim_middle>",
                         "max_tokens": 256, "temperature": 0.01, "stop": FIM_STOPS, "stream": True}


async def test_clines_first_turn_streams_with_usage_last(api):
    response = await api.post("/v1/chat/completions", json=CLINE_BODY)
    assert response.status_code == 200, response.text
    frames = sse_frames(response)
    assert frames[-1] == "[DONE]"
    chunks = frames[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(REPLY)
    assert all(c.get("usage") is None for c in chunks[:-1])


async def test_clines_text_parts_are_joined_into_the_users_message(api, pool_and_registry):
    await api.post("/v1/chat/completions", json={**CLINE_BODY, "stream": False, "stream_options": None})
    engine = pool_and_registry[0].loaded["tiny@1"].engine
    prompt = "".join(chr(t) if t < 0xF0000 else "|" for t in engine.prompts[-1])
    assert CLINE_TASK[0]["text"] + CLINE_TASK[1]["text"] in prompt and CLINE_SYSTEM in prompt


async def test_continues_chat_with_six_stop_words(api):
    response = await api.post("/v1/chat/completions", json=CONTINUE_CHAT)
    assert response.status_code == 200, response.text
    chunks = sse_frames(response)[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == REPLY


async def test_continues_autocomplete_body_with_its_own_fim_template_and_thirteen_stops(api):
    response = await api.post("/v1/completions", json=CONTINUE_AUTOCOMPLETE)
    assert response.status_code == 200, response.text
    frames = sse_frames(response)
    assert frames[-1] == "[DONE]"
    # the scripted reply has no blank line, no "```" and no "\ndef": it arrives whole
    assert "".join(c["choices"][0]["text"] for c in frames[:-1]) == REPLY


async def test_continue_reads_model_ids(api):
    listed = (await api.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["default", "tiny"]
    assert all(isinstance(m["id"], str) and m["object"] == "model" for m in listed["data"])


READ_FILE = {"type": "function", "function": {
    "name": "read_file", "description": "Read the contents of a file at the given path.",
    "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "relative path"}},
                   "required": ["path"], "additionalProperties": False}}}
CLINE_TOOL_TURN = {**CLINE_BODY, "tools": [READ_FILE], "messages": [
    *CLINE_BODY["messages"],
    # Cline's assistant turn with a call and no text: `content` is left out, the call's arguments a JSON text
    {"role": "assistant", "tool_calls": [{"id": "call_0a1b", "type": "function",
                                          "function": {"name": "read_file", "arguments": '{"path":"math_utils.py"}'}}]},
    {"role": "tool", "tool_call_id": "call_0a1b", "content": "def add(a, b):\n    return a + b\n"},
    {"role": "user", "content": [{"type": "text", "text": "<environment_details>\n# Open Tabs\nmath_utils.py\n"
                                                          "</environment_details>"}]}]}


async def test_clines_tool_turn_with_native_tools_and_no_tool_choice(api, pool_and_registry):
    response = await api.post("/v1/chat/completions", json=CLINE_TOOL_TURN)
    assert response.status_code == 200, response.text
    chunks = sse_frames(response)[:-1]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == REPLY
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["stop"]  # no call in the answer: tool_choice defaults to auto
    engine = pool_and_registry[0].loaded["tiny@1"].engine
    prompt = "".join(map(engine.token_text, engine.prompts[-1]))
    assert "read_file" in prompt and "math_utils.py" in prompt and "return a + b" in prompt


async def test_clines_tool_call_streams_back_as_a_call(api, pool_and_registry):
    await api.post("/v1/chat/completions", json={**CLINE_BODY, "stream": False, "stream_options": None,
                                                  "max_tokens": 1})
    pool_and_registry[0].loaded["tiny@1"].engine.reply = \
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "math_utils.py"}}\n</tool_call>'
    response = await api.post("/v1/chat/completions", json={**CLINE_BODY, "tools": [READ_FILE]})
    chunks = sse_frames(response)[:-1]
    calls = [call for c in chunks if c["choices"] for call in c["choices"][0]["delta"].get("tool_calls") or []]
    assert calls[0]["function"]["name"] == "read_file" and calls[0]["id"]
    arguments = "".join(call["function"].get("arguments") or "" for call in calls)
    assert json.loads(arguments) == {"path": "math_utils.py"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] \
        == ["tool_calls"]
    assert chunks[-1]["usage"]["completion_tokens"] > 0


async def test_continues_chat_with_tools(api):
    response = await api.post("/v1/chat/completions", json={**CONTINUE_CHAT, "tools": [READ_FILE]})
    assert response.status_code == 200, response.text
    assert sse_frames(response)[-1] == "[DONE]"
