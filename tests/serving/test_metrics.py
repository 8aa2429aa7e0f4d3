"""Metrics and logs through a real gunicorn with two workers: /metrics adds up what every worker counted, whichever
worker answers it, and both workers write one rotating JSON-lines log file without losing or tearing a line.

Which worker answered a request is read from the log: each line carries its writer's pid and the request's id. The
server has keys (so requests carry one, and /metrics needs an admin key): `app` sends the traffic, `tight` has a
limit of one request a minute, `ops` scrapes.
"""
from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from factory.keys import KeyStore
from tests.fixtures.metrics_text import parse, value
from tests.serving.conftest import Server, start_server, stop_server

HI = [{"role": "user", "content": "hi"}]
MAX_BATCH = 4


@dataclass
class Served:
    server: Server
    logs: Path  # the log file's folder
    secrets: dict[str, str]  # key name -> secret

    def send(self, method: str, path: str, key: str = "app", **kwargs) -> tuple[str, httpx.Response]:
        """One request on a connection of its own, so that either worker may take it; returns its id too."""
        request_id = uuid.uuid4().hex
        headers = {"X-Request-Id": request_id, "Authorization": f"Bearer {self.secrets[key]}"}
        return request_id, httpx.request(method, f"{self.server.url}{path}", headers=headers, timeout=60, **kwargs)

    def workers_of(self, request_ids) -> dict[str, int]:
        """request id -> pid of the worker that answered it (from its access line)."""
        return {line["request_id"]: line["pid"] for line in log_lines(self.logs)
                if line["logger"] == "factory.serving.access" and line.get("request_id") in request_ids}


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_mlx):
    root = tmp_path_factory.mktemp("metrics")
    keys = KeyStore(root)
    secrets = {"app": keys.create("app", "inference"), "tight": keys.create("tight", "inference", rpm=1),
               "ops": keys.create("ops", "admin")}
    server = start_server(root, tiny_mlx, FACTORY_SERVE_WORKERS="2", FACTORY_SERVE_MODELS_MAX_BATCH=str(MAX_BATCH),
                          FACTORY_SERVE_LOGS_FILE=str(root / "logs" / "server.jsonl"),
                          FACTORY_SERVE_LOGS_ROTATE_MB="0.001", FACTORY_SERVE_LOGS_KEEP="100")
    yield Served(server, root / "logs", secrets)
    stop_server(server.process)


def log_lines(folder: Path) -> list[dict]:
    """Every line of the log file and its rotated predecessors; each must be one whole JSON object."""
    lines = []
    for path in sorted(folder.glob("server.jsonl*")):
        for number, text in enumerate(path.read_text().splitlines(), 1):
            try:
                lines.append(json.loads(text))
            except ValueError:
                pytest.fail(f"{path.name}:{number} is not a JSON line: {text!r}")
    return lines


@pytest.fixture(scope="module")
def traffic(served):
    """Generations until both workers have served some, plus a 404 on a route, an unmatched 404 and a 400.
    Returns what the clients were told: usage per generation, and the count per (route, method, status)."""
    usages, statuses, generations = [], Counter(), []
    for turn in range(40):
        if turn % 2:
            request_id, response = served.send("POST", "/v1/completions",
                                        json={"model": "tiny", "prompt": "one two", "max_tokens": 3})
            route = "/v1/completions"
        else:
            request_id, response = served.send("POST", "/v1/chat/completions",
                                        json={"model": "tiny", "messages": HI, "max_tokens": 5, "temperature": 0})
            route = "/v1/chat/completions"
        assert response.status_code == 200
        usages.append(response.json()["usage"])
        statuses[(route, "POST", 200)] += 1
        generations.append(request_id)
        if turn >= 7 and len(set(served.workers_of(set(generations)).values())) == 2:
            break
    with httpx.stream("POST", f"{served.server.url}/v1/chat/completions", timeout=60, headers={
            "Authorization": f"Bearer {served.secrets['app']}"}, json={
            "model": "tiny", "messages": HI, "max_tokens": 6, "stream": True,
            "stream_options": {"include_usage": True}}) as response:
        frames = [json.loads(line[6:]) for line in response.iter_lines()
                  if line.startswith("data: {")]
    usages.append(frames[-1]["usage"])
    statuses[("/v1/chat/completions", "POST", 200)] += 1
    assert served.send("GET", "/v1/models/no-such-model")[1].status_code == 404
    assert served.send("GET", "/no/such/path")[1].status_code == 404
    assert served.send("POST", "/v1/chat/completions", json={"model": "tiny"})[1].status_code == 400
    statuses.update({("/v1/models/{model_id}", "GET", 404): 1, ("unmatched", "GET", 404): 1,
                     ("/v1/chat/completions", "POST", 400): 1})
    return usages, statuses, served.workers_of(set(generations))


def test_both_workers_served_and_every_scrape_reports_the_sum(served, traffic):
    usages, statuses, served_by = traffic
    assert len(set(served_by.values())) == 2, "one worker took every request: the sum is not tested"
    artifact = served.server.registry.resolve("tiny").manifest()["artifacts"]["mlx-float16"]["files"]
    nbytes = sum(entry["size"] for entry in artifact.values())
    completion = sum(usage["completion_tokens"] for usage in usages)
    started = sum(usage["completion_tokens"] > 0 for usage in usages)  # sequences that had a first token
    scrapes = {}
    for _ in range(30):  # until each worker has answered a scrape
        request_id, response = served.send("GET", "/metrics", key="ops")
        scrapes[request_id] = parse(response.text)
        by_worker = served.workers_of(set(scrapes))
        if len(set(by_worker.values())) == 2:
            break
    assert len(set(by_worker.values())) == 2, "one worker answered every scrape"
    for request_id, pid in by_worker.items():
        samples = scrapes[request_id]
        for (route, method, status), count in statuses.items():
            assert value(samples, "factory_requests_total", route=route, method=method, status=str(status)) == count, \
                (pid, route, status)
        assert not any("no-such-model" in str(labels) or "/no/such" in str(labels) for _, labels in samples)
        assert value(samples, "factory_prompt_tokens_total", model="tiny", key="app") == \
            sum(usage["prompt_tokens"] for usage in usages)
        assert value(samples, "factory_completion_tokens_total", model="tiny", key="app") == completion
        assert value(samples, "factory_generated_tokens_total", model="tiny@1") == completion
        assert value(samples, "factory_time_to_first_token_seconds_count", model="tiny@1") == started
        assert value(samples, "factory_inter_token_latency_seconds_count", model="tiny@1") == completion - started
        # each worker holds its own copy of the model
        assert value(samples, "factory_models_loaded", model="tiny@1") == 2
        assert value(samples, "factory_model_loaded_bytes", model="tiny@1") == 2 * nbytes
        assert value(samples, "factory_batch_slots", model="tiny@1") == 2 * MAX_BATCH
        assert value(samples, "factory_sequences_active", model="tiny@1") == 0
        assert ("factory_sequences_queued", (("model", "tiny@1"),)) in samples
        assert ("factory_batch_occupancy", (("model", "tiny@1"),)) in samples


def test_both_workers_write_one_rotating_log_of_whole_json_lines(served, traffic):
    _, _, served_by = traffic
    with ThreadPoolExecutor(8) as pool:  # both workers writing (and rotating) at once
        burst = [request_id for request_id, _ in pool.map(lambda _: served.send("GET", "/health"), range(48))]
    assert len(list(served.logs.glob("server.jsonl.*"))) >= 2, "the log file was never rotated"
    lines = log_lines(served.logs)  # fails on any torn or interleaved line
    access = [line for line in lines if line["logger"] == "factory.serving.access"]
    assert all(line.get("request_id") for line in access)
    ids = Counter(line["request_id"] for line in access)
    assert all(ids[request_id] == 1 for request_id in [*served_by, *burst]), "an access line was lost or doubled"
    assert {line["pid"] for line in access} == set(served_by.values())
    assert all(line.get("key") == "app" for line in access if line["request_id"] in served_by)
    loaded = [line for line in lines if line["message"].startswith("loaded tiny@1")]
    assert len(loaded) == 2 and all(line.get("request_id") for line in loaded)  # logged inside the request


def test_rate_limit_refusals_are_counted_by_key_name_never_by_secret(served, traffic):
    answers = [served.send("POST", "/v1/chat/completions", key="tight",
                    json={"model": "tiny", "messages": HI, "max_tokens": 1})[1] for _ in range(4)]
    refused = sum(response.status_code == 429 for response in answers)
    assert refused >= 2 and all(response.status_code in (200, 429) for response in answers)
    text = served.send("GET", "/metrics", key="ops")[1].text
    samples = parse(text)
    assert value(samples, "factory_rate_limited_total", key="tight", limit="requests") == refused
    # refused before routing, yet counted under the route it asked for
    assert value(samples, "factory_requests_total", route="/v1/chat/completions", method="POST",
                 status="429") == refused
    assert not any(secret in text for secret in served.secrets.values())


def test_a_worker_that_dies_takes_its_gauges_and_leaves_its_counts(served, traffic):
    """Last in this module: it kills a worker (gunicorn starts another, which has loaded nothing yet)."""
    usages, statuses, served_by = traffic

    def scrape():
        return parse(served.send("GET", "/metrics", key="ops")[1].text)

    before = scrape()
    assert value(before, "factory_models_loaded", model="tiny@1") == 2
    os.kill(next(iter(served_by.values())), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while value(after := scrape(), "factory_models_loaded", model="tiny@1") != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert value(after, "factory_models_loaded", model="tiny@1") == 1
    assert value(after, "factory_batch_slots", model="tiny@1") == MAX_BATCH
    for name, labels in [("factory_generated_tokens_total", {"model": "tiny@1"}),
                         ("factory_completion_tokens_total", {"model": "tiny", "key": "app"}),
                         ("factory_requests_total", {"route": "/v1/completions", "method": "POST", "status": "200"})]:
        assert value(after, name, **labels) == value(before, name, **labels) > 0, name
