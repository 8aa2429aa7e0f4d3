"""Chat and text completions in-process through the official openai SDK: one generation skeleton, two wire shapes,
streamed and whole. The scripted engine answers REPLY one character per token."""
from __future__ import annotations

import pytest

from tests.fixtures.metrics_text import parse, value
from tests.fixtures.scripted_engine import REPLY
from tests.serving.api.conftest import sse_frames

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


async def test_chat_whole_and_streamed_give_the_same_text_and_usage(sdk):
    whole = await sdk.chat.completions.create(model="tiny", messages=HI)
    assert whole.choices[0].message.content == REPLY and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == len(REPLY) and whole.system_fingerprint == "tiny@1"
    chunks = [c async for c in await sdk.chat.completions.create(model="tiny", messages=HI, stream=True,
                                                                  stream_options={"include_usage": True})]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


async def test_usage_reports_the_prompt_tokens_reused_from_the_prefix_cache(sdk, pool_and_registry):
    system = {"role": "system", "content": "You answer briefly. " * 8}
    first = await sdk.chat.completions.create(model="tiny", messages=[system, *HI])
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    pool, *_ = pool_and_registry
    engine = pool.loaded["tiny@1"].engine
    engine.prefix_cache = True  # the scripted engine reports the prefix a prompt shares with earlier ones
    other = [system, {"role": "user", "content": "ho"}]
    again = await sdk.chat.completions.create(model="tiny", messages=other)
    shared = next(i for i, (a, b) in enumerate(zip(*engine.prompts[-2:])) if a != b)
    assert again.usage.prompt_tokens_details.cached_tokens == shared > 100
    chunks = [c async for c in await sdk.chat.completions.create(model="tiny", messages=other, n=2, stream=True,
                                                                  stream_options={"include_usage": True})]
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1
    texts = [await sdk.completions.create(model="tiny", prompt="the same prompt", max_tokens=2) for _ in range(2)]
    assert [t.usage.prompt_tokens_details.cached_tokens for t in texts] == [0, len("the same prompt") - 1]


async def test_max_tokens_n_and_the_developer_role(sdk, pool_and_registry):
    reply = await sdk.chat.completions.create(model="default", n=3, max_tokens=5, messages=[
        {"role": "developer", "content": "be brief"}, *HI])
    assert [c.message.content for c in reply.choices] == [REPLY[:5]] * 3
    assert {c.finish_reason for c in reply.choices} == {"length"} and reply.usage.completion_tokens == 15
    pool, *_ = pool_and_registry
    engine = pool.loaded["tiny@1"].engine
    prompt = "".join(map(engine.token_text, engine.prompts[-1]))
    assert prompt.startswith("<|im_start|>system\nbe brief")  # OpenAI's developer role is the template's system


async def test_text_completions_whole_and_streamed_with_logprobs(sdk):
    whole = await sdk.completions.create(model="tiny", prompt="x", max_tokens=4, logprobs=2)
    assert whole.choices[0].text == REPLY[:4] and whole.object == "text_completion"
    assert whole.choices[0].logprobs.tokens == list(REPLY[:4])
    assert whole.choices[0].logprobs.text_offset == [0, 1, 2, 3]
    assert whole.choices[0].logprobs.top_logprobs[0] == {"H": -0.25, "?": -2.0}
    chunks = [c async for c in await sdk.completions.create(model="tiny", prompt="x", max_tokens=4, logprobs=2,
                                                             stream=True)]
    streamed = [c.choices[0] for c in chunks if c.choices and c.choices[0].text]
    assert "".join(c.text for c in streamed) == REPLY[:4]
    # streamed completions carry logprobs too, each chunk its own token's, offsets counting on
    assert [c.logprobs.tokens for c in streamed] == [[ch] for ch in REPLY[:4]]
    assert [c.logprobs.text_offset for c in streamed] == [[0], [1], [2], [3]]


async def test_chat_logprobs_streamed_and_whole(sdk):
    whole = await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=3, logprobs=True, top_logprobs=1)
    assert [entry.token for entry in whole.choices[0].logprobs.content] == list(REPLY[:3])
    assert all(len(entry.top_logprobs) == 1 for entry in whole.choices[0].logprobs.content)
    chunks = [c async for c in await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=3,
                                                                  logprobs=True, stream=True)]
    assert [c.choices[0].logprobs.content[0].logprob for c in chunks if c.choices and c.choices[0].delta.content] \
        == [-0.25] * 3


async def test_a_stop_string_cuts_the_text(sdk):
    reply = await sdk.chat.completions.create(model="tiny", messages=HI, stop=["scripted"])
    assert reply.choices[0].message.content == REPLY[: REPLY.index("scripted")]
    assert reply.choices[0].finish_reason == "stop"


async def test_the_chat_alias_path_answers_like_the_v1_path(api):
    body = {"model": "tiny", "messages": HI, "max_tokens": 3}
    reply = (await api.post("/chat", json=body)).json()
    assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] == 3
    frames = sse_frames(await api.post("/chat", json={**body, "stream": True}))
    assert frames[-1] == "[DONE]" and frames[-2]["choices"][0]["finish_reason"] == "length"


async def test_models_list_and_metadata(sdk):
    listed = [m.id for m in (await sdk.models.list()).data]
    assert listed == ["default", "tiny"]
    model = await sdk.models.retrieve("tiny@1")
    extra = model.model_extra
    assert extra["ref"] == "tiny@1" and extra["context_length"] == 256 and extra["formats"] == ["mlx-float16"]
    assert "default" in extra["aliases"] and extra["quantization"] == {"mlx-float16": "float16"}


async def test_health_ready_and_metrics(api, sdk):
    assert (await api.get("/health")).json() == {"status": "ok"}
    ready = (await api.get("/ready")).json()
    assert ready == {"status": "ready", "default_model": "default", "version": "tiny@1"}

    def generated(text: str) -> float:  # metrics are process-wide: count this test's tokens only
        return value(parse(text), "factory_generated_tokens_total", model="tiny@1")

    before = generated((await api.get("/metrics")).text)
    await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
    assert generated((await api.get("/metrics")).text) - before == 4


async def test_the_configured_default_model_wins_over_spec_aliases(tmp_path):
    from tests.fixtures.scripted_engine import scripted_pool

    pool, registry, _ = scripted_pool(tmp_path, models={"default": "other"})  # `tiny` declares the alias `default`
    registry.publish("other", {"mlx-float16": tmp_path / "artifact"}, serve={})
    await pool.start()
    try:
        assert (await pool.describe("default")).ref == "other@1"
        assert (await pool.probe()).ref == "other@1"
    finally:
        await pool.stop()


async def test_a_sequence_left_early_still_counts_the_tokens_it_generated(pool_and_registry):
    """Each token event carries the sequence's count so far, so usage (what token limits and metrics are charged)
    counts a stream the client leaves before its end, up to the last event it got."""
    from serving.api.render.openai import Usage
    from serving.inference.types import GenerateRequest, SamplingParams, TokenEvent

    pool, *_ = pool_and_registry
    await pool.start()
    try:
        async with pool.lease("tiny") as handle:
            events = await handle.stream(GenerateRequest(messages=[{"role": "user", "content": "hi"}], n=2,
                                                         sampling=SamplingParams(max_tokens=20)))
            usage, seen = Usage(events.prompt_tokens), []
            async for event in events.events():
                usage.add(event)
                seen.append(event)
                if len(seen) == 5:
                    break  # the client leaves
            await events.aclose()
    finally:
        await pool.stop()
    tokens = [(e.index, e.completion_tokens) for e in seen if isinstance(e, TokenEvent)]
    assert len(tokens) == 5
    assert usage.completion_tokens == sum(max(c for i, c in tokens if i == index) for index in {i for i, _ in tokens})
    assert 0 < usage.completion_tokens < 40
