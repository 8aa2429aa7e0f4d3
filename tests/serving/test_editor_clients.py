"""Cline's and Continue's request bodies against a real gunicorn server on the real SmolLM2-135M (llama.cpp): the
chat template renders text-part arrays, the stream ends with the usage chunk and [DONE], and Continue's autocomplete
body (its own FIM template in a raw prompt, thirteen stop strings) is served as a plain completion."""
from __future__ import annotations

import json

import httpx

from tests.serving.api.test_editor_clients import CLINE_BODY, CLINE_TOOL_TURN, CONTINUE_AUTOCOMPLETE, CONTINUE_CHAT


def streamed(server, path: str, body: dict) -> list:
    frames = []
    with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                frames.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return frames


def test_clines_body_streams_an_answer_with_usage_last(smollm2):
    frames = streamed(smollm2, "/v1/chat/completions", {**CLINE_BODY, "max_tokens": 24})
    assert frames[-1] == "[DONE]" and frames[-2]["choices"] == []
    usage = frames[-2]["usage"]
    text = "".join(f["choices"][0]["delta"].get("content") or "" for f in frames[:-2])
    assert text.strip() and 1 <= usage["completion_tokens"] <= 24
    assert usage["prompt_tokens"] > 60  # the system prompt, both text parts and the template's markup


def test_continues_chat_and_autocomplete_bodies(smollm2):
    chat = streamed(smollm2, "/v1/chat/completions", {**CONTINUE_CHAT, "max_tokens": 16})
    assert chat[-1] == "[DONE]" and any(f["choices"][0]["delta"].get("content") for f in chat[:-1] if f["choices"])
    completion = streamed(smollm2, "/v1/completions", {**CONTINUE_AUTOCOMPLETE, "max_tokens": 16})
    assert completion[-1] == "[DONE]"
    text = "".join(f["choices"][0]["text"] for f in completion[:-1])
    assert not any(stop in text for stop in CONTINUE_AUTOCOMPLETE["stop"])  # cut before any of its stops


def test_clines_tool_turn_on_a_template_without_tools(smollm2):
    """SmolLM2-135M's template renders no tools: the server's fallback prompt carries them and the tool history."""
    first = streamed(smollm2, "/v1/chat/completions", {**CLINE_BODY, "max_tokens": 8})[-2]["usage"]
    frames = streamed(smollm2, "/v1/chat/completions", {**CLINE_TOOL_TURN, "max_tokens": 24})
    assert frames[-1] == "[DONE]"
    finished = [f["choices"][0]["finish_reason"] for f in frames[:-2] if f["choices"][0]["finish_reason"]]
    assert len(finished) == 1 and finished[0] in ("stop", "length", "tool_calls")
    assert frames[-2]["usage"]["prompt_tokens"] > first["prompt_tokens"] + 40  # the tool, the call, its result
