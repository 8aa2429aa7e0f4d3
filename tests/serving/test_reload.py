"""Hot reload without restart, and compute freed when a client goes away."""
from __future__ import annotations

import asyncio
import time

import httpx

HI = [{"role": "user", "content": "Tell me about paths."}]


def test_publishing_during_8_streams_swaps_versions_without_a_failed_request(fresh_server, tiny_mlx_v2):
    server = fresh_server
    pid = server.process.pid

    async def scenario():
        client = server.async_client
        streams = [await client.chat.completions.create(model="tiny", messages=HI, max_tokens=1200, temperature=0,
                                                        stream=True) for _ in range(8)]

        async def drain(stream):
            text, fingerprints, finish = "", set(), None
            async for chunk in stream:
                fingerprints.add(chunk.system_fingerprint)
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish = chunk.choices[0].finish_reason or finish
            return text, fingerprints, finish

        draining = [asyncio.create_task(drain(s)) for s in streams]
        await asyncio.sleep(0.3)  # the streams are generating
        assert not any(task.done() for task in draining), "streams finished before the publish; make them longer"
        await asyncio.to_thread(server.registry.publish, "tiny", {"mlx-float16": tiny_mlx_v2},
                                serve={"aliases": ["default"], "context_length": 2048})
        published_at = time.monotonic()
        results = await asyncio.gather(*draining)
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - published_at)))
        after = await client.chat.completions.create(model="tiny", messages=HI, max_tokens=4, temperature=0)
        return results, after

    results, after = asyncio.run(scenario())
    for text, fingerprints, finish in results:
        assert fingerprints == {"tiny@1"} and finish == "length" and len(text) > 0
    assert after.system_fingerprint == "tiny@2"
    assert server.process.pid == pid and server.process.poll() is None  # no restart
    models = server.client.models.retrieve("tiny")
    assert models.model_extra["ref"] == "tiny@2"


def test_a_client_that_disconnects_frees_its_slot_within_a_step(server):
    body = {"model": "tiny", "messages": HI, "max_tokens": 1900, "temperature": 0, "stream": True}
    before = server.metric("factory_generated_tokens_total", "tiny@1")
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as response:
        lines = response.iter_lines()
        for _ in range(6):
            next(lines)
        assert server.metric("factory_sequences_active", "tiny@1") == 1
    # the client is gone: the sequence leaves the batch and generation stops
    deadline = time.monotonic() + 5
    while server.metric("factory_sequences_active", "tiny@1") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.metric("factory_sequences_active", "tiny@1") == 0
    stopped_at = server.metric("factory_generated_tokens_total", "tiny@1")
    time.sleep(0.5)
    assert server.metric("factory_generated_tokens_total", "tiny@1") == stopped_at
    assert stopped_at - before < 1900, "the abandoned sequence ran to the end"
