"""Keys and rate limits through real gunicorn with TWO workers: what the workers must share (a key's requests per
minute and tokens per minute, in SQLite or in a real Redis) and what each must notice at once (a revocation).

Each test talks to each worker on purpose: it opens connections until it holds one accepted by each worker (the
worker is found from /proc: the process whose file descriptors hold the server side of the connection), so "both
workers answered" is a fact the test checks rather than a hope about how the kernel spreads connections.
"""
from __future__ import annotations

import http.client
import json
import os
import time
from pathlib import Path

import pytest

from factory.keys import KeyStore
from tests.fixtures.redis_server import redis_server
from tests.serving.conftest import Server, start_server, stop_server

HI = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def two_workers(request, tmp_path_factory, tiny_mlx) -> Server:
    """One two-worker server per store for the whole module (tests make keys of their own names)."""
    limits = {}
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        limits = {"FACTORY_SERVE_LIMITS_STORE": "redis", "FACTORY_SERVE_LIMITS_URL": url}
    running = start_server(tmp_path_factory.mktemp(f"front-door-{request.param}"), tiny_mlx,
                           FACTORY_SERVE_WORKERS="2", **limits)
    running.store = request.param
    yield running
    stop_server(running.process)


# ---------------------------------------------------------------- which worker holds a connection


def worker_pids(server: Server) -> set[int]:
    """The gunicorn master's children."""
    pids = set()
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == server.process.pid:
            pids.add(int(name))
    return pids


def server_side_inode(server_port: int, client_port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return inode
    return None


def owner(connection: http.client.HTTPConnection, pids: set[int]) -> int | None:
    inode = server_side_inode(connection.port, connection.sock.getsockname()[1])
    for pid in pids:
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]" for fd in os.listdir(f"/proc/{pid}/fd")):
                return pid
        except OSError:  # an fd closed while we looked
            continue
    return None


def connection_to_worker(server: Server, other_than: set[int] = frozenset()) -> tuple[http.client.HTTPConnection, int]:
    """A new connection to one of the server's workers, not one in `other_than` (it has answered a /health, so it is
    accepted; use it at once: the server closes connections idle for 5 s)."""
    pids = worker_pids(server)
    assert len(pids) == 2, pids
    host, port = server.url.removeprefix("http://").split(":")
    for _ in range(200):
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("GET", "/health")
        connection.getresponse().read()
        pid = owner(connection, pids)
        if pid is not None and pid not in other_than:
            return connection, pid
        connection.close()
    raise AssertionError(f"200 connections all went to the workers {sorted(other_than)} of {sorted(pids)}")


def one_connection_per_worker(server: Server) -> list[http.client.HTTPConnection]:
    first, pid = connection_to_worker(server)
    return [first, connection_to_worker(server, other_than={pid})[0]]


def call(connection: http.client.HTTPConnection, method: str, path: str, secret: str,
         body: dict | None = None) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of one request on `connection`."""
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    data = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data) if data else {}


# ---------------------------------------------------------------- the tests


def test_requests_per_minute_hold_across_both_workers(two_workers):
    limit = 4
    secret = KeyStore(two_workers.registry.root.parent).create(f"rpm-{two_workers.store}", "inference", rpm=limit)
    first, second = one_connection_per_worker(two_workers)
    # 12 requests, alternating workers: with a limit per worker, 2 x 4 would get through
    answers = [call((first, second)[i % 2], "GET", "/v1/models", secret) for i in range(3 * limit)]
    statuses = [status for status, _, _ in answers]
    assert statuses == [200] * limit + [429] * (2 * limit), statuses
    assert [headers["x-ratelimit-remaining-requests"] for _, headers, _ in answers[:limit]] == ["3", "2", "1", "0"]
    assert all(body["error"]["code"] == "rate_limit_exceeded" for _, _, body in answers[limit:])
    # the refusals of both workers, added up by whichever worker answers /metrics (for an admin key only)
    admin = KeyStore(two_workers.registry.root.parent).create(f"prometheus-{two_workers.store}", "admin")
    assert call(first, "GET", "/metrics", secret)[0] == 403
    first.request("GET", "/metrics", headers={"Authorization": f"Bearer {admin}"})
    exposition = first.getresponse().read().decode()
    assert f'factory_rate_limited_total{{key="rpm-{two_workers.store}",limit="requests"}} {2.0 * limit}' in exposition


def test_tokens_spent_on_one_worker_are_spent_on_the_other(two_workers):
    secret = KeyStore(two_workers.registry.root.parent).create(f"tpm-{two_workers.store}", "inference", tpm=10)
    first, pid = connection_to_worker(two_workers)
    status, _, reply = call(first, "POST", "/v1/chat/completions", secret, HI)
    assert status == 200 and reply["usage"]["total_tokens"] > 10
    second, _ = connection_to_worker(two_workers, other_than={pid})  # after the answer: the model may have loaded
    status, headers, refused = call(second, "POST", "/v1/chat/completions", secret, HI)
    assert status == 429 and refused["error"]["type"] == "tokens" and int(headers["retry-after"]) > 1
    assert f"used {reply['usage']['total_tokens']}." in refused["error"]["message"]


def test_a_revoked_key_stops_on_every_worker_within_a_second(two_workers):
    keys = KeyStore(two_workers.registry.root.parent)
    secret = keys.create(f"leaving-{two_workers.store}", "inference")
    connections = one_connection_per_worker(two_workers)
    assert [call(c, "GET", "/v1/models", secret)[0] for c in connections] == [200, 200]
    keys.revoke(f"leaving-{two_workers.store}")  # as `factory keys revoke` does: no signal, no restart
    deadline = time.monotonic() + 1.0
    refused = set()
    while len(refused) < len(connections) and time.monotonic() < deadline:
        for index, connection in enumerate(connections):
            status, _, body = call(connection, "GET", "/v1/models", secret)
            if status == 401:
                assert body["error"]["code"] == "invalid_api_key"
                refused.add(index)
    assert refused == {0, 1}, "a worker still accepted the revoked key a second later"
