"""API keys and per-key rate limits in-process (the real app over ASGI, a scripted engine): who gets in, with which
scope, how many requests and tokens a minute, the OpenAI error shapes and headers, and the official SDK's view."""
from __future__ import annotations

import asyncio
import json
import re
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from prometheus_client import REGISTRY

from factory.keys import KeyStore
from factory.services import free_port
from serving.app import create_app
from tests.fixtures.scripted_engine import REPLY, scripted_pool
from tests.serving.api.conftest import sse_frames

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]
CHAT = {"model": "tiny", "messages": HI, "max_tokens": 4}


@asynccontextmanager
async def lifespan(app):
    """The ASGI lifespan, as uvicorn runs it: middleware start (the model pool) and stop (the limit store)."""
    inbox, outbox = asyncio.Queue(), asyncio.Queue()
    running = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await outbox.get())["type"] == "lifespan.startup.complete"
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await running


@asynccontextmanager
async def served(tmp_path, **config):
    """An httpx client of the app built from server config `config`, and the key store of its factory root."""
    pool, _, settings = scripted_pool(tmp_path, **config)
    app = create_app(settings, models=pool)
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                                base_url="http://in-process") as client:
        yield client, KeyStore(settings.root)


@pytest.fixture
async def door(tmp_path):
    async with served(tmp_path) as (client, keys):
        yield client, keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    return body["error"]


def seconds(duration: str) -> float:
    """OpenAI's duration format ("250ms", "1m30.5s", "6m0s") read back."""
    if duration.endswith("ms"):
        return float(duration[:-2]) / 1000
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?([\d.]+)s", duration)
    assert parts, duration
    hours, minutes, rest = parts.groups()
    return int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(rest)


def rejected(key: str, limit: str) -> float:
    return REGISTRY.get_sample_value("factory_rate_limited_total", {"key": key, "limit": limit}) or 0.0


# ---------------------------------------------------------------- who gets in


async def test_without_keys_the_server_is_open(door):
    client, _ = door
    response = await client.get("/v1/models")
    assert response.status_code == 200 and not any(h.startswith("x-ratelimit") for h in response.headers)
    assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_required_means_required_even_before_any_key(tmp_path):
    async with served(tmp_path, auth={"keys": "required"}) as (client, _):
        error_of(await client.get("/v1/models"), 401, "invalid_api_key")
        assert (await client.get("/health")).status_code == 200


async def test_one_key_closes_every_api_route(door):
    client, keys = door
    keys.create("someone", "admin")
    for method, path in [("GET", "/v1/models"), ("GET", "/v1/models/tiny"), ("POST", "/v1/chat/completions"),
                         ("POST", "/v1/completions"), ("POST", "/chat"), ("GET", "/v1/files"),
                         ("POST", "/v1/fine_tuning/jobs"), ("POST", "/fine-tune"), ("GET", "/metrics"),
                         ("POST", "/v1/embeddings"), ("GET", "/v1")]:
        error = error_of(await client.request(method, path, json=CHAT), 401, "invalid_api_key")
        assert error["type"] == "authentication_error" and "didn't provide an API key" in error["message"]
    for path in ["/health", "/ready"]:
        assert (await client.get(path)).status_code == 200
    for path in ["/openapi.json", "/docs"]:  # open, whether or not they exist yet
        assert (await client.get(path)).status_code not in (401, 403)


async def test_lookalike_paths_do_not_slip_past(door):
    client, keys = door
    keys.create("someone", "admin")
    for path in ["//v1/models", "/v1//models", "/v1/models/", "/V1/models", "/chat/", "/metrics/", "/v1/files/",
                 "/%76%31/models", "/health/../v1/models"]:
        response = await client.get(path)
        assert response.status_code in (401, 404), (path, response.status_code)


async def test_wrong_and_revoked_keys_get_401_without_an_echo(door):
    client, keys = door
    secret = keys.create("ci", "inference")
    assert (await client.get("/v1/models", headers=bearer(secret))).status_code == 200
    for headers in [bearer(secret + "x"), bearer("sk-fac-guess"), {"Authorization": f"Basic {secret}"},
                    {"Authorization": "Bearer"}, {"x-api-key": "nope"}]:
        response = await client.get("/v1/models", headers=headers)
        error = error_of(response, 401, "invalid_api_key")
        assert error["message"] == "Incorrect API key provided." or "didn't provide" in error["message"]
        assert secret not in response.text and "guess" not in response.text
    keys.revoke("ci")
    response = await client.get("/v1/models", headers=bearer(secret))
    assert error_of(response, 401, "invalid_api_key")["message"] == "Incorrect API key provided."


async def test_x_api_key_is_accepted(door):
    client, keys = door
    secret = keys.create("anthropic-style", "inference")
    assert (await client.get("/v1/models", headers={"x-api-key": secret})).status_code == 200
    assert (await client.get("/v1/models", headers={"Authorization": f"bearer {secret}"})).status_code == 200


ROUTES = [  # (method, path, body, the scope it needs)
    ("GET", "/v1/models", None, "inference"),
    ("GET", "/v1/models/tiny", None, "inference"),
    ("POST", "/v1/chat/completions", CHAT, "inference"),
    ("POST", "/chat", CHAT, "inference"),
    ("POST", "/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 2}, "inference"),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": "x"}, "inference"),  # every other /v1 API, present or not
    ("GET", "/v1/filesystem", None, "inference"),  # not under /v1/files
    ("GET", "/v1/files", None, "fine-tune"),
    ("GET", "/v1/files/file-nope", None, "fine-tune"),
    ("POST", "/v1/fine_tuning/jobs", {}, "fine-tune"),
    ("POST", "/fine-tune", {}, "fine-tune"),
    ("GET", "/metrics", None, "admin"),
]


@pytest.mark.parametrize("scope", ["inference", "fine-tune", "admin"])
async def test_scopes(door, scope):
    client, keys = door
    secret = keys.create(f"k-{scope}", scope)
    for method, path, body, needed in ROUTES:
        response = await client.request(method, path, json=body, headers=bearer(secret))
        if scope in ("admin", needed):
            assert response.status_code not in (401, 403), (path, response.text)
        else:
            error = error_of(response, 403, "insufficient_scope")
            assert error["type"] == "permission_error" and f"needs '{needed}'" in error["message"], path


async def test_cors_preflight_needs_no_key(tmp_path):
    async with served(tmp_path, cors={"origins": ["http://ui.test"]}) as (client, keys):
        keys.create("web", "inference")
        preflight = await client.options("/v1/chat/completions", headers={
            "Origin": "http://ui.test", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://ui.test"
        # the request it announces is checked, and a page may read why it was refused
        refused = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://ui.test"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "http://ui.test"


async def test_metrics_need_an_admin_key_once_keys_exist(door):
    client, keys = door
    assert (await client.get("/metrics")).status_code == 200  # no keys: open
    admin, reader = keys.create("prometheus", "admin"), keys.create("app", "inference")
    error_of(await client.get("/metrics"), 401, "invalid_api_key")
    error_of(await client.get("/metrics", headers=bearer(reader)), 403, "insufficient_scope")
    assert (await client.get("/metrics", headers=bearer(admin))).status_code == 200


async def test_log_lines_name_the_key_and_never_hold_a_secret(door, log_lines):
    client, keys = door
    secret = keys.create("logged", "inference")
    await client.post("/v1/chat/completions", json=CHAT, headers=bearer(secret))
    await client.get("/v1/models", headers=bearer(secret + "wrong"))
    await client.get("/health")
    records = [r for r in map(json.loads, log_lines) if r["logger"] == "factory.serving.access"]
    assert [(r["path"], r["status"], r.get("key")) for r in records] == [
        ("/v1/chat/completions", 200, "logged"), ("/v1/models", 401, None), ("/health", 200, None)]
    assert not any(secret[7:] in line for line in log_lines)


# ---------------------------------------------------------------- rate limits


async def test_requests_per_minute_headers_then_429(door):
    client, keys = door
    secret = keys.create("rpm3", "inference", rpm=3, tpm=10_000)
    before = rejected("rpm3", "requests")
    answers = [await client.get("/v1/models", headers=bearer(secret)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0"]
    assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"3"}
    # reset: until the bucket is full again, at one request per 20 s
    resets = [seconds(a.headers["x-ratelimit-reset-requests"]) for a in answers]
    assert [round(reset) for reset in resets] == [20, 40, 60] and resets[0] <= 20
    assert {(a.headers["x-ratelimit-limit-tokens"], a.headers["x-ratelimit-remaining-tokens"],
             a.headers["x-ratelimit-reset-tokens"]) for a in answers} == {("10000", "10000", "0s")}

    refused = await client.get("/v1/models", headers=bearer(secret))
    error = error_of(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert re.fullmatch(r"Rate limit reached for requests per minute \(RPM\) on key rpm3: limit 3, used 3\. "
                        r"Please try again in 19\.\d+s\.", error["message"]), error["message"]
    assert refused.headers["retry-after"] == "20" and refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert rejected("rpm3", "requests") == before + 1
    # its own budget: another key is not affected, a key without limits gets no limit headers
    other = keys.create("free", "inference")
    assert [(await client.get("/v1/models", headers=bearer(other))).status_code for _ in range(5)] == [200] * 5
    assert "x-ratelimit-limit-requests" not in (await client.get("/v1/models", headers=bearer(other))).headers


async def test_a_key_without_the_scope_spends_nothing(door):
    client, keys = door
    secret = keys.create("narrow", "fine-tune", rpm=1)
    for _ in range(3):
        error_of(await client.get("/v1/models", headers=bearer(secret)), 403, "insufficient_scope")
    assert (await client.get("/v1/files", headers=bearer(secret))).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
async def test_tokens_per_minute_spent_by_a_generation(door, stream):
    client, keys = door
    secret = keys.create("tpm", "inference", rpm=100, tpm=40)
    before = rejected("tpm", "tokens")
    body = {"model": "tiny", "messages": HI, "stream": stream, "stream_options": {"include_usage": True}} \
        if stream else {"model": "tiny", "messages": HI}
    first = await client.post("/v1/chat/completions", json=body, headers=bearer(secret))
    assert first.status_code == 200 and first.headers["x-ratelimit-remaining-tokens"] == "40"
    usage = sse_frames(first)[-2]["usage"] if stream else first.json()["usage"]
    assert usage["completion_tokens"] == len(REPLY) and usage["total_tokens"] > 40  # the whole answer, then debit

    refused = await client.post("/v1/chat/completions", json=body, headers=bearer(secret))
    error = error_of(refused, 429, "rate_limit_exceeded")
    assert error["type"] == "tokens" and refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert f"tokens per minute (TPM) on key tpm: limit 40, used {usage['total_tokens']}." in error["message"]
    # the debt is paid back at 40 tokens a minute before one more token is free
    assert int(refused.headers["retry-after"]) == -(-(usage["total_tokens"] - 40 + 1) * 60 // 40)
    assert rejected("tpm", "tokens") == before + 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "99"  # the refused request took no request


async def test_the_openai_sdk_sees_its_own_errors(door):
    client, keys = door
    secret = keys.create("sdk", "inference", rpm=2)

    def sdk(api_key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url="http://in-process/v1", api_key=api_key, http_client=client,
                                  max_retries=0)

    reply = await sdk(secret).chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == REPLY[:4]
    with pytest.raises(openai.AuthenticationError) as wrong:
        await sdk("sk-fac-wrong").models.list()
    assert wrong.value.code == "invalid_api_key"
    with pytest.raises(openai.PermissionDeniedError) as narrow:
        await sdk(keys.create("tuner", "fine-tune")).chat.completions.create(**CHAT)
    assert narrow.value.code == "insufficient_scope"
    await sdk(secret).models.list()
    with pytest.raises(openai.RateLimitError) as limited:
        await sdk(secret).models.list()
    assert limited.value.code == "rate_limit_exceeded" and limited.value.response.headers["retry-after"] == "30"


async def test_the_redis_store_in_process(tmp_path, redis_url):
    async with served(tmp_path, limits={"store": "redis", "url": redis_url}) as (client, keys):
        secret = keys.create("via-redis", "inference", rpm=2)
        statuses = [(await client.get("/v1/models", headers=bearer(secret))).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
    assert not (tmp_path / "limits.db").exists()  # the buckets are in Redis


async def test_an_unreachable_store_refuses_rather_than_lifting_the_limit(tmp_path):
    async with served(tmp_path, limits={"store": "redis", "url": f"redis://127.0.0.1:{free_port()}/0"}) as (
            client, keys):
        limited, free = keys.create("limited", "inference", rpm=5), keys.create("unlimited", "inference")
        error = error_of(await client.get("/v1/models", headers=bearer(limited)), 503,
                         "rate_limit_store_unavailable")
        assert error["type"] == "server_error"
        assert (await client.get("/v1/models", headers=bearer(free))).status_code == 200  # nothing to count
