"""/metrics in one process (no gunicorn, so prometheus_client's own registry): requests by route template, tokens as
usage reported them, token timings and batch gauges. Metrics are process-wide, so each test compares before and after.
(Across gunicorn workers: tests/serving/test_metrics.py.)"""
from __future__ import annotations

import pytest

from tests.fixtures.metrics_text import parse, value
from tests.fixtures.scripted_engine import REPLY

pytestmark = pytest.mark.anyio
HI = [{"role": "user", "content": "hi"}]


async def scrape(api) -> dict:
    response = await api.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


async def test_requests_are_counted_by_route_template_never_by_path(api):
    before = await scrape(api)
    assert (await api.get("/v1/models/no-such-model")).status_code == 404
    assert (await api.get("/v1/models/another-unknown")).status_code == 404
    assert (await api.get("/no/such/path")).status_code == 404
    assert (await api.post("/v1/chat/completions", json={"model": "tiny"})).status_code == 400
    # refused before Falcon routes it (the declared body is too large): still counted under its own route
    refused = await api.post("/v1/chat/completions", content=b"{}", headers={"content-length": str(64 << 20)})
    assert refused.status_code == 413
    after = await scrape(api)

    def grew(route: str, method: str, status: int) -> float:
        labels = {"route": route, "method": method, "status": str(status)}
        return value(after, "factory_requests_total", **labels) - value(before, "factory_requests_total", **labels)

    assert grew("/v1/models/{model_id}", "GET", 404) == 2
    assert grew("unmatched", "GET", 404) == 1
    assert grew("/v1/chat/completions", "POST", 400) == 1
    assert grew("/v1/chat/completions", "POST", 413) == 1
    assert not any("no-such-model" in str(labels) or "/no/such" in str(labels) for _, labels in after)


async def test_tokens_timings_and_batch_gauges(api, sdk):
    before = await scrape(api)
    whole = await sdk.chat.completions.create(model="tiny", messages=HI, max_tokens=4)
    streamed = [c async for c in await sdk.chat.completions.create(
        model="default", messages=HI, stream=True, stream_options={"include_usage": True})]
    usage = streamed[-1].usage
    after = await scrape(api)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("factory_prompt_tokens_total", model="tiny", key="") == whole.usage.prompt_tokens
    assert grew("factory_completion_tokens_total", model="tiny", key="") == 4
    assert grew("factory_prompt_tokens_total", model="default", key="") == usage.prompt_tokens
    assert grew("factory_completion_tokens_total", model="default", key="") == usage.completion_tokens == len(REPLY)
    # one first token per sequence, then one interval per further token
    assert grew("factory_time_to_first_token_seconds_count", model="tiny@1") == 2
    assert grew("factory_inter_token_latency_seconds_count", model="tiny@1") == 3 + len(REPLY) - 1
    assert grew("factory_generated_tokens_total", model="tiny@1") == 4 + len(REPLY)
    # gauges: this process's pools (other tests' included), so only their consistency is certain here
    slots, active = value(after, "factory_batch_slots", model="tiny@1"), value(after, "factory_sequences_active",
                                                                                model="tiny@1")
    assert slots >= 1 and value(after, "factory_batch_occupancy", model="tiny@1") == active / slots
    assert value(after, "factory_models_loaded", model="tiny@1") >= 1
    assert value(after, "factory_model_loaded_bytes", model="tiny@1") > 0
