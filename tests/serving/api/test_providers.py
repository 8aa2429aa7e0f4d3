"""Upstream providers in-process: a gateway app (the real app, catalog, pool, providers) in front of upstreams that
are either this server's own app over ASGI (a scripted engine, real keys) or a misbehaving loopback server
(tests/fixtures/raw_upstream.py) for what real upstreams do only by accident: 5xx, dropped connections, streams cut
halfway, refusals. Real upstream processes, killed and restarted: tests/serving/test_providers.py."""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import asynccontextmanager

import httpx
import openai
import pytest

from factory.keys import KeyStore
from factory.services import free_port
from serving.app import create_app
from serving.inference.catalog import Catalog
from serving.inference.providers import ProviderSet
from serving.api.schemas import responses
from tests.fixtures.raw_upstream import CUT, DROP, HOLD, RawUpstream, error, http, stream
from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import sse_frames

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
SECRET = "sk-upstream-" + "Zq7" * 12  # the raw upstreams' key (they accept any)


def provider(name: str, *urls: str, **fields) -> dict:
    """A provider's config: quick checks and backoff, so tests wait on nothing long."""
    return {"name": name, "base_urls": list(urls), "check_interval_s": 0.2, "backoff_s": 0.01, "timeout_s": 10,
            **fields}


@asynccontextmanager
async def gateway(root, providers: list[dict], *, environ: dict | None = None, upstream=None, **config):
    """An httpx client of a gateway app serving the scripted local model `tiny` and `providers`; `upstream`: an app
    mounted at http://upstream. Started and stopped as a worker's lifespan would."""
    pool, _, settings = scripted_pool(root, providers=providers, **config)
    mounts = {"http://upstream": httpx.ASGITransport(app=upstream)} if upstream is not None else None
    catalog = Catalog(pool, ProviderSet(settings.providers, environ or {}, mounts))
    app = create_app(settings, models=catalog)
    await catalog.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway",
                                     timeout=30) as client:
            yield client, catalog
    finally:
        await catalog.stop()


@pytest.fixture
async def upstream(tmp_path):
    """This server's own app as an upstream, with API keys required: (app, the key a gateway may use)."""
    pool, _, settings = scripted_pool(tmp_path / "upstream")
    secret = KeyStore(settings.root).create("gateway", "inference")
    await pool.start()
    yield create_app(settings, models=pool), secret
    await pool.stop()


async def raw(*script) -> RawUpstream:
    return await RawUpstream(list(script)).start()


def error_of(response: httpx.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    responses.ErrorBody.model_validate(body)  # our shape, exactly
    assert body["error"]["code"] == code, body
    return body["error"]


async def poll(check, deadline_s: float = 10):
    deadline = time.monotonic() + deadline_s
    while not (result := await check()):
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)
    return result


def provider_status(catalog: Catalog, name: str):
    return next(status for status in catalog.providers() if status.name == name)


# ---------------------------------------------------------------- this server as the upstream


async def test_models_and_providers_list_every_provider_with_its_state(tmp_path, upstream):
    app, key = upstream
    closed = f"http://127.0.0.1:{free_port()}/v1"
    providers = [provider("up", closed, "http://upstream/v1", api_key_env="UP_KEY", discover=True),
                 provider("fixed", "http://upstream/v1", api_key_env="UP_KEY", models=["tiny", "ghost"]),
                 provider("nokey", "http://upstream/v1", api_key_env="NO_SUCH_KEY", models=["tiny"])]
    async with gateway(tmp_path / "gw", providers, environ={"UP_KEY": key}, upstream=app) as (client, _):
        listed = (await client.get("/v1/models")).json()
        responses.ModelList.model_validate(listed)  # the documented shape, exactly
        models = {m["id"]: m for m in listed["data"]}
        assert list(models) == ["default", "tiny", "up/default", "up/tiny", "fixed/tiny", "fixed/ghost", "nokey/tiny"]
        assert models["tiny"]["owned_by"] == "llm-factory" and "state" not in models["tiny"]
        assert {(m["owned_by"], m["state"], m["engine"]) for i, m in models.items() if i.startswith("up/")} \
            == {("up", "HEALTHY", "remote")}
        assert models["nokey/tiny"]["state"] == "NOT_CONFIGURED" and models["nokey/tiny"]["loaded"] is False
        assert (await client.get("/v1/models/up/tiny")).json()["ref"] == "up/tiny"

        answer = await client.get("/v1/providers")
        responses.ProviderList.model_validate(answer.json())
        status = {p["name"]: p for p in answer.json()["data"]}
        assert status["up"]["state"] == "HEALTHY" and status["up"]["reason"] is None
        assert status["up"]["models"] == ["up/default", "up/tiny"]
        dead, alive = status["up"]["replicas"]
        assert (dead["url"], dead["state"]) == (closed, "UNHEALTHY") and "connection failed" in dead["reason"]
        assert (alive["state"], alive["reason"]) == ("HEALTHY", None) and alive["checked_at"] >= time.time() - 60
        assert status["nokey"]["state"] == "NOT_CONFIGURED" and "NO_SUCH_KEY" in status["nokey"]["reason"]
        assert key not in answer.text and key[7:] not in (await client.get("/v1/models")).text


CASES = [  # (path, body) answered by the local model and by the same model through a provider: equal answers
    ("/v1/chat/completions", {"messages": HI}),
    ("/v1/chat/completions", {"messages": HI, "n": 2, "max_tokens": 5, "logprobs": True, "top_logprobs": 2}),
    ("/v1/chat/completions", {"messages": HI, "stop": ["scripted"], "temperature": 0, "seed": 3}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 4, "logprobs": 2}),
    ("/v1/completions", {"prompt": "x", "max_tokens": 6, "n": 3}),
]


def comparable(answer: dict) -> dict:
    """An answer without what differs per response (id, time) or names the model, and without the prompt tokens
    reused from a prefix cache (each engine has its own; a provider's are not passed on)."""
    kept = {k: v for k, v in answer.items() if k not in ("id", "created", "model", "system_fingerprint")}
    if isinstance(kept.get("usage"), dict):
        kept["usage"] = {k: v for k, v in kept["usage"].items() if k != "prompt_tokens_details"}
    return kept


def streamed(frames: list) -> list:
    """The chunks of a stream, comparable, in order."""
    return [comparable(frame) if isinstance(frame, dict) else frame for frame in frames]


async def test_a_provider_model_answers_exactly_as_the_upstream_does_whole_and_streamed(tmp_path, upstream):
    app, key = upstream
    async with gateway(tmp_path / "gw", [provider("up", "http://upstream/v1", api_key_env="UP_KEY", discover=True)],
                       environ={"UP_KEY": key}, upstream=app) as (client, _):
        for path, body in CASES:
            local = await client.post(path, json={"model": "tiny", **body})
            remote = await client.post(path, json={"model": "up/tiny", **body})
            assert remote.status_code == 200, remote.text
            assert comparable(remote.json()) == comparable(local.json())
            assert remote.json()["model"] == "up/tiny" and remote.json()["system_fingerprint"] == "up/tiny"
            for extra in ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}):
                local = sse_frames(await client.post(path, json={"model": "tiny", **body, **extra}))
                remote = sse_frames(await client.post(path, json={"model": "up/tiny", **body, **extra}))
                assert streamed(remote) == streamed(local)  # chunk by chunk, one per token, usage included
        sdk = openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="unused", http_client=client, max_retries=0)
        chunks = [c async for c in await sdk.chat.completions.create(model="up/tiny", messages=HI, stream=True)]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY


async def test_upstream_refusals_come_back_in_our_shape(tmp_path, upstream):
    app, key = upstream
    providers = [provider("up", "http://upstream/v1", api_key_env="UP_KEY", models=["tiny", "ghost"]),
                 provider("nokey", "http://upstream/v1", api_key_env="NO_SUCH_KEY", models=["tiny"])]
    async with gateway(tmp_path / "gw", providers, environ={"UP_KEY": key}, upstream=app) as (client, _):
        chat = {"model": "up/tiny", "messages": [{"role": "user", "content": "x" * 300}]}
        refused = error_of(await client.post("/v1/chat/completions", json=chat), 400, "context_length_exceeded")
        assert refused["param"] == "messages" and refused["message"].startswith("provider up: ")
        too_long = error_of(await client.post("/v1/completions", json={"model": "up/tiny", "prompt": "x " * 300}),
                            400, "context_length_exceeded")
        assert too_long["param"] == "prompt" and too_long["message"].startswith("provider up: ")
        ghost = error_of(await client.post("/v1/chat/completions", json={"model": "up/ghost", "messages": HI}),
                         404, "model_not_found")
        assert "up/ghost" in ghost["message"] and "does not exist" in ghost["message"]  # the upstream's 404
        error_of(await client.post("/v1/chat/completions", json={"model": "up/unlisted", "messages": HI}),
                 404, "model_not_found")  # not listed: refused here, nothing sent
        error_of(await client.get("/v1/models/up/unlisted"), 404, "model_not_found")
        unset = await client.post("/v1/chat/completions", json={"model": "nokey/tiny", "messages": HI})
        assert "NO_SUCH_KEY" in error_of(unset, 503, "provider_not_configured")["message"]
        assert "retry-after" not in unset.headers  # waiting does not set a variable
        error_of(await client.post("/v1/embeddings", json={"model": "up/tiny", "input": "x"}),
                 400, "model_not_supported")
        tune = await client.post("/v1/fine_tuning/jobs", json={"model": "up/tiny", "training_file": "file-x"})
        error_of(tune, 400, "model_not_supported")


async def test_a_refused_key_makes_the_provider_unhealthy_and_is_never_shown(tmp_path, upstream, log_lines):
    app, _ = upstream
    wrong = "sk-fac-" + "W" * 43
    async with gateway(tmp_path / "gw", [provider("up", "http://upstream/v1", api_key_env="UP_KEY", discover=True)],
                       environ={"UP_KEY": wrong}, upstream=app) as (client, _):
        status = (await client.get("/v1/providers")).json()["data"][0]
        assert status["state"] == "UNHEALTHY" and "GET /models answered 401" in status["reason"]
        refused = await client.post("/v1/chat/completions", json={"model": "up/tiny", "messages": HI})
        error_of(refused, 503, "provider_unhealthy")
        assert int(refused.headers["retry-after"]) >= 1
        texts = [refused.text, json.dumps(status), (await client.get("/v1/models")).text, *log_lines]
    assert not any(wrong in text or wrong[7:] in text for text in texts)
    assert any('"state": "UNHEALTHY"' in line and '"provider": "up"' in line for line in log_lines)


# ---------------------------------------------------------------- misbehaving upstreams


async def test_a_5xx_before_the_first_byte_is_retried_with_backoff(tmp_path):
    upstream = await raw(error("500 Internal Server Error", "boom"), error("503 Service Unavailable", "busy"),
                         stream("hel", "lo", usage={"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}))
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, api_key_env="K", models=["m"], retries=2)],
                           environ={"K": SECRET}) as (client, _):
            answer = await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI})
            assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "hello"
            assert answer.json()["usage"]["prompt_tokens"] == 7 and answer.json()["usage"]["completion_tokens"] == 2
            assert len(upstream.posts) == 3 and upstream.authorizations == [f"Bearer {SECRET}"] * 3
            assert upstream.posts[0]["stream"] is True and upstream.posts[0]["model"] == "m"

            upstream.script[:] = [error("502 Bad Gateway", "down")] * 3
            given_up = await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI})
            message = error_of(given_up, 503, "provider_unavailable")["message"]
            assert message.count("HTTP 502: down") == 3 and "retry-after" in given_up.headers
            assert len(upstream.posts) == 6  # 1 + retries
    finally:
        await upstream.stop()


async def test_a_dropped_connection_fails_over_to_the_next_replica(tmp_path):
    dropping, serving = await raw(*[DROP] * 4), await raw()
    try:
        async with gateway(tmp_path, [provider("pair", dropping.url, serving.url, models=["m"], retries=1)]) \
                as (client, _):
            for _ in range(2):  # round robin: one of the two starts at the dropping replica
                answer = await client.post("/v1/chat/completions", json={"model": "pair/m", "messages": HI})
                assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "ok"
            assert (len(dropping.posts), len(serving.posts)) == (1, 2)
    finally:
        await dropping.stop()
        await serving.stop()


async def test_nothing_is_retried_once_the_stream_has_begun(tmp_path):
    upstream = await raw(CUT, CUT)
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, models=["m"], retries=3)]) as (client, _):
            body = {"model": "raw/m", "messages": HI}
            frames = sse_frames(await client.post("/v1/chat/completions", json={**body, "stream": True}))
            texts = [f["choices"][0]["delta"].get("content") for f in frames if isinstance(f, dict) and f.get("choices")]
            assert texts == ["", "a", "b"]  # what arrived before the cut reached the client
            assert "mid-stream" in frames[-1]["error"]["message"]  # then the error, not a fresh attempt
            whole = await client.post("/v1/chat/completions", json=body)
            assert whole.status_code == 500 and "mid-stream" in whole.json()["error"]["message"]
            assert len(upstream.posts) == 2
    finally:
        await upstream.stop()


def echo_key(headers: dict) -> bytes:
    return error("401 Unauthorized", f"Incorrect API key provided: {headers.get('authorization')}")


async def test_upstream_refusals_map_to_our_statuses_without_the_key(tmp_path, log_lines):
    upstream = await raw(
        http("429 Too Many Requests", json.dumps({"error": {"message": "slow down"}}), Retry_After="7"),
        echo_key,
        http("422 Unprocessable Entity", json.dumps({"detail": [{"loc": ["body", "temperature"],
                                                                 "msg": "Input should be less than 2"}]})),
        error("400 Bad Request", "bad stop", param="stop", code="invalid_stop"),
        http("404 Not Found", "no such model", "text/plain"),
        http("400 Bad Request", json.dumps({"error": "ollama says no"})))
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, api_key_env="K", models=["m"])],
                           environ={"K": SECRET}) as (client, _):
            async def ask():
                return await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI})

            limited = await ask()
            assert "slow down" in error_of(limited, 429, "queue_full")["message"]
            assert limited.headers["retry-after"] == "7"
            refused = await ask()
            assert error_of(refused, 503, "provider_auth_failed")["message"] == \
                "provider raw refused this server's credentials (HTTP 401)"
            invalid = error_of(await ask(), 400, None)
            assert invalid["param"] == "temperature" and "less than 2" in invalid["message"]
            assert error_of(await ask(), 400, "invalid_stop")["param"] == "stop"
            assert "no such model" in error_of(await ask(), 404, "model_not_found")["message"]
            assert error_of(await ask(), 400, None)["message"] == "provider raw: ollama says no"
            assert len(upstream.posts) == 6  # no refusal is retried
            texts = [refused.text, (await client.get("/v1/providers")).text, *log_lines]
        assert not any(SECRET in text or SECRET[12:] in text for text in texts)
    finally:
        await upstream.stop()


async def test_health_follows_the_upstream_down_and_up_again_without_a_restart(tmp_path, log_lines):
    upstream = await raw()
    changes: list[tuple[str, str]] = []
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, models=["m"])]) as (client, catalog):
            catalog.subscribe_providers(lambda status, previous: changes.append((previous, status.state)))
            assert provider_status(catalog, "raw").state == "HEALTHY"
            await upstream.stop()  # the upstream dies
            await poll(lambda: asyncio.sleep(0, provider_status(catalog, "raw").state == "UNHEALTHY"), 5)
            down = provider_status(catalog, "raw")
            assert "connection failed" in down.reason and down.reason.startswith(upstream.url)
            posts = len(upstream.posts)
            refused = await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI})
            assert "is unhealthy" in error_of(refused, 503, "provider_unhealthy")["message"]
            assert 1 <= int(refused.headers["retry-after"]) <= 1  # the next check, 0.2 s away, rounded up
            assert len(upstream.posts) == posts  # failed fast: nothing was sent
            assert (await client.get("/v1/models/raw/m")).json()["state"] == "UNHEALTHY"  # still listed

            await upstream.start()  # the same port again
            await poll(lambda: asyncio.sleep(0, provider_status(catalog, "raw").state == "HEALTHY"), 5)
            answer = await client.post("/v1/chat/completions", json={"model": "raw/m", "messages": HI})
            assert answer.status_code == 200
    finally:
        await upstream.stop()
    assert changes == [("HEALTHY", "UNHEALTHY"), ("UNHEALTHY", "HEALTHY")]
    logged = [json.loads(line) for line in log_lines if '"provider": "raw"' in line]
    assert [(line["previous"], line["state"]) for line in logged] == [
        ("UNHEALTHY", "HEALTHY"), ("HEALTHY", "UNHEALTHY"), ("UNHEALTHY", "HEALTHY")]  # the first check, then each change
    assert "connection failed" in logged[1]["reason"]


async def test_requests_beyond_max_concurrency_get_429(tmp_path):
    upstream = await raw(HOLD)
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, models=["m"], max_concurrency=1)]) \
                as (client, catalog):
            body = {"model": "raw/m", "messages": HI, "stream": True}
            first = asyncio.ensure_future(client.post("/v1/chat/completions", json=body))
            await poll(lambda: asyncio.sleep(0, len(upstream.posts) == 1))
            busy = await client.post("/v1/chat/completions", json=body)
            assert "max_concurrency" in error_of(busy, 429, "queue_full")["message"]
            upstream.release.set()
            frames = sse_frames(await first)
            assert frames[-1] == "[DONE]" and frames[1]["choices"][0]["delta"]["content"] == "first"
            assert catalog.provider_set.get("raw").in_flight == 0  # the place came back
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    finally:
        upstream.release.set()
        await upstream.stop()


# ---------------------------------------------------------------- the response cache


async def test_the_cache_answers_identical_deterministic_requests_local_and_remote(tmp_path):
    upstream = await raw()
    try:
        async with gateway(tmp_path, [provider("raw", upstream.url, models=["m"])], cache={"enabled": True}) \
                as (client, _):
            for model in ("tiny", "raw/m"):
                body = {"model": model, "messages": HI, "temperature": 0}
                first, again = [await client.post("/v1/chat/completions", json=body) for _ in range(2)]
                assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
                assert comparable(again.json()) == comparable(first.json()) and again.json()["id"] != first.json()["id"]
                replayed = await client.post("/v1/chat/completions", json={
                    **body, "stream": True, "stream_options": {"include_usage": True}})
                assert replayed.headers["x-cache"] == "hit"  # the same request, streamed: the entry replays
                frames = sse_frames(replayed)
                contents = [f["choices"][0]["delta"]["content"] for f in frames[1:] if isinstance(f, dict)
                            and f["choices"] and f["choices"][0]["delta"].get("content")]
                assert "".join(contents) == first.json()["choices"][0]["message"]["content"]
                assert len(contents) == first.json()["usage"]["completion_tokens"]  # chunk by chunk, as generated
                assert frames[-2]["usage"]["completion_tokens"] == first.json()["usage"]["completion_tokens"]
                seeded = {"model": model, "messages": HI, "seed": 42, "temperature": 1}
                assert [(await client.post("/v1/chat/completions", json=seeded)).headers["x-cache"]
                        for _ in range(2)] == ["miss", "hit"]
                sampled = await client.post("/v1/chat/completions", json={"model": model, "messages": HI})
                assert "x-cache" not in sampled.headers  # not deterministic: never cached
                other = await client.post("/v1/chat/completions", json={**body, "max_tokens": 3})
                assert other.headers["x-cache"] == "miss"
            assert len(upstream.posts) == 4  # first, seeded, sampled, max_tokens 3: hits never went out

            upstream.script[:] = [CUT]
            cut = {"model": "raw/m", "messages": [{"role": "user", "content": "cut"}], "temperature": 0}
            assert (await client.post("/v1/chat/completions", json=cut)).status_code == 500
            retried = await client.post("/v1/chat/completions", json=cut)
            assert retried.status_code == 200 and retried.headers["x-cache"] == "miss"  # a failure is not kept
            completion = {"model": "tiny", "prompt": "x", "max_tokens": 4, "temperature": 0}
            assert [(await client.post("/v1/completions", json=completion)).headers["x-cache"]
                    for _ in range(2)] == ["miss", "hit"]
    finally:
        await upstream.stop()


async def test_the_cache_is_off_by_default(tmp_path):
    async with gateway(tmp_path, []) as (client, _):
        body = {"model": "tiny", "messages": HI, "temperature": 0}
        answers = [await client.post("/v1/chat/completions", json=body) for _ in range(2)]
        assert [answer.status_code for answer in answers] == [200, 200]
        assert not any("x-cache" in answer.headers for answer in answers)
