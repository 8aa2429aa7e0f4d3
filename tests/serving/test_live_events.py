"""The web UI's server side against a real two-worker gunicorn server: the /v1/events WebSocket (a snapshot on
connect, events from both workers, tickets), the registry catalog and its admin changes, generation stats, the hub
search against the local hub, and spec checking. Clients: the `websockets` package, httpx, the openai SDK."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from factory.keys import KeyStore
from tests.serving.conftest import Server, start_server, stop_server


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_gguf, local_hub) -> Server:
    """Two workers, keys required (an admin key and an inference key), the local hub as HF_ENDPOINT."""
    root = tmp_path_factory.mktemp("live")
    keys = KeyStore(root)
    secrets = {"admin": keys.create("ui-admin", "admin"), "inference": keys.create("ui-reader", "inference"),
               "fine-tune": keys.create("ui-tuner", "fine-tune")}
    running = start_server(root, tiny_gguf, "gguf-f16", FACTORY_SERVE_WORKERS="2",
                           FACTORY_SERVE_AUTH_KEYS="required")
    running.secrets = secrets
    running.keys = keys
    yield running
    stop_server(running.process)


def headers(server: Server, scope: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {server.secrets[scope]}"}


def ticket(server: Server, scope: str = "inference") -> str:
    reply = httpx.post(f"{server.url}/v1/events/tickets", headers=headers(server, scope))
    assert reply.status_code == 200, reply.text
    assert reply.json()["expires_in"] > 0
    return reply.json()["ticket"]


def open_events(server: Server, ticket_: str | None = None):
    ws_url = server.url.replace("http://", "ws://") + "/v1/events" + (f"?ticket={ticket_}" if ticket_ else "")
    return connect(ws_url, open_timeout=30, proxy=None)


def next_event(ws, wanted, timeout: float = 30.0) -> dict:
    """The first event for which `wanted(event)` holds, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "the event did not come"
        event = json.loads(ws.recv(timeout=left))
        if wanted(event):
            return event


def refusal(server: Server, ticket_: str | None) -> tuple[int, str]:
    with open_events(server, ticket_) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def sockets_on_both_workers(server: Server) -> list:
    """Two event sockets held by different workers (the snapshot names the worker); closes the rest."""
    by_worker, spare = {}, []
    for _ in range(40):
        ws = open_events(server, ticket(server))
        snapshot = json.loads(ws.recv(timeout=30))
        assert snapshot["type"] == "snapshot"
        if snapshot["worker"] in by_worker:
            spare.append(ws)
        else:
            by_worker[snapshot["worker"]] = ws
        if len(by_worker) == 2:
            break
    for ws in spare:
        ws.close()
    assert len(by_worker) == 2, "every socket landed on one worker"
    return list(by_worker.values())


# ---------------------------------------------------------------- the socket


def test_a_snapshot_comes_on_connect(served):
    with open_events(served, ticket(served)) as ws:
        snapshot = json.loads(ws.recv(timeout=30))
    assert snapshot["type"] == "snapshot" and snapshot["time"] > 0 and snapshot["id"] is None
    tiny = next(model for model in snapshot["registry"]["models"] if model["name"] == "tiny")
    assert tiny["latest"] == 1 and tiny["aliases"]["latest"] == 1
    assert isinstance(snapshot["loaded"], list) and snapshot["providers"] == []


def test_without_a_ticket_the_socket_is_closed_4401(served):
    assert refusal(served, None)[0] == 4401
    assert refusal(served, "evt_made-up")[0] == 4401


def test_a_ticket_works_once(served):
    once = ticket(served)
    with open_events(served, once) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "snapshot"
    code, reason = refusal(served, once)
    assert code == 4401 and "used" in reason


def test_a_ticket_of_a_revoked_key_is_refused_4403(served):
    secret = served.keys.create("ui-leaving", "inference")
    reply = httpx.post(f"{served.url}/v1/events/tickets", headers={"Authorization": f"Bearer {secret}"})
    served.keys.revoke("ui-leaving")
    assert refusal(served, reply.json()["ticket"])[0] == 4403


def test_tickets_need_a_key_with_the_inference_scope(served):
    assert httpx.post(f"{served.url}/v1/events/tickets").status_code == 401
    refused = httpx.post(f"{served.url}/v1/events/tickets", headers=headers(served, "fine-tune"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "insufficient_scope"


def test_a_generation_on_either_worker_reaches_sockets_on_both(served):
    sockets = sockets_on_both_workers(served)
    try:
        client = served.client.with_options(api_key=served.secrets["inference"])
        client.chat.completions.create(model="tiny", max_tokens=6, temperature=0,
                                       messages=[{"role": "user", "content": "hello"}])
        seen = [next_event(ws, lambda e: e["type"] == "generation") for ws in sockets]
    finally:
        for ws in sockets:
            ws.close()
    assert seen[0] == seen[1]  # one event, told to both workers' sockets
    event = seen[0]
    assert event["model"] == "tiny" and event["tokens"] == 6 and event["prompt_tokens"] > 0
    assert event["ttft_s"] > 0 and event["tokens_per_s"] > 0 and event["id"] > 0


def test_a_model_load_is_told_and_a_socket_can_ask_for_what_it_missed(served):
    """/ready loaded `tiny` before any socket was open: a socket that asks for the events after id 0 gets the
    load from the log first (the page that reconnects with the last id it saw does the same)."""
    url = served.url.replace("http://", "ws://") + f"/v1/events?ticket={ticket(served)}&after=0"
    with connect(url, proxy=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "snapshot"
        loading = next_event(ws, lambda e: e["type"] == "model.loading")
        loaded = next_event(ws, lambda e: e["type"] == "model.loaded")
    assert loading["ref"] == loaded["ref"] == "tiny@1" and loading["id"] < loaded["id"]
    assert loaded["bytes"] > 0 and loaded["seconds"] >= 0 and loaded["artifact"] == "gguf-f16"


# ---------------------------------------------------------------- the registry


def test_the_catalog_lists_versions_with_formats_and_aliases(served):
    listing = httpx.get(f"{served.url}/v1/registry/models", headers=headers(served, "inference")).json()
    tiny = next(model for model in listing["data"] if model["name"] == "tiny")
    version = tiny["versions"][0]
    assert version["ref"] == "tiny@1" and "latest" in version["aliases"]
    assert version["formats"] == [{"key": "gguf-f16", "format": "gguf", "quantization": None,
                                   "bytes": version["formats"][0]["bytes"]}] and version["formats"][0]["bytes"] > 0
    missing = httpx.get(f"{served.url}/v1/registry/models/nope", headers=headers(served, "inference"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_promote_and_rollback_are_admin_changes_told_as_events(served, tiny_gguf):
    url = f"{served.url}/v1/admin/registry/models/tiny"
    refused = httpx.post(f"{url}/promote", json={"version": 1, "alias": "prod"}, headers=headers(served, "inference"))
    assert refused.status_code == 403
    with open_events(served, ticket(served)) as ws:
        ws.recv(timeout=30)
        served.registry.publish("tiny", {"gguf-f16": tiny_gguf})  # tiny@2, as a build would
        published = next_event(ws, lambda e: e["type"] == "registry.published" and e["ref"] == "tiny@2")
        assert published["formats"] == ["gguf-f16"]
        for version in (1, 2):
            promoted = httpx.post(f"{url}/promote", json={"version": version, "alias": "prod"},
                                  headers=headers(served))
            assert promoted.status_code == 200 and "prod" in promoted.json()["aliases"]
            event = next_event(ws, lambda e: e["type"] == "registry.promoted")
            assert (event["alias"], event["version"]) == ("prod", version)
        rolled = httpx.post(f"{url}/rollback", json={"alias": "prod"}, headers=headers(served))
        assert rolled.status_code == 200 and rolled.json()["ref"] == "tiny@1"
        event = next_event(ws, lambda e: e["type"] == "registry.rolled_back")
        assert (event["alias"], event["version"], event["previous"]) == ("prod", 1, 2)
    again = httpx.post(f"{url}/rollback", json={"alias": "prod"}, headers=headers(served))
    assert again.status_code == 400 and again.json()["error"]["code"] == "nothing_to_roll_back"
    latest = httpx.post(f"{url}/promote", json={"version": 1, "alias": "latest"}, headers=headers(served))
    assert latest.status_code == 400 and "latest" in latest.json()["error"]["message"]


# ---------------------------------------------------------------- adding a model


def test_hub_search_and_files_come_from_the_local_hub(served):
    found = httpx.get(f"{served.url}/v1/hub/models", params={"search": "llama"}, headers=headers(served, "inference"))
    assert found.status_code == 200, found.text
    assert [model["id"] for model in found.json()["data"]] == ["tiny/llama"]
    nothing = httpx.get(f"{served.url}/v1/hub/models", params={"search": "mistral"},
                        headers=headers(served, "inference"))
    assert nothing.json()["data"] == []
    files = httpx.get(f"{served.url}/v1/hub/files/tiny/llama", headers=headers(served, "inference")).json()
    sizes = {entry["path"]: entry["size"] for entry in files["data"]}
    assert "config.json" in sizes and sizes["config.json"] > 0
    missing = httpx.get(f"{served.url}/v1/hub/files/tiny/none", headers=headers(served, "inference"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "repo_not_found"


BAD_SPEC = """\
name: added-by-ui
source:
  hf: tiny/llama
formats:
  - gguf:
      type: q9_9
"""


def test_a_spec_with_a_bad_field_gets_file_line_errors(served):
    reply = httpx.post(f"{served.url}/v1/admin/specs", json={"spec": BAD_SPEC}, headers=headers(served))
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_spec"
    specs = served.registry.root.parent / "specs"
    assert reply.json()["error"]["message"] == (f"{specs}/added-by-ui.yaml:6: formats[0].gguf.type: must be one of "
                                                "f16, q8_0, q4_0, q4_k_m")  # as `factory spec check` prints it
    assert not (specs / "added-by-ui.yaml").exists()


def test_a_valid_spec_is_written_to_the_specs_folder(served):
    good = BAD_SPEC.replace("q9_9", "q8_0")
    refused = httpx.post(f"{served.url}/v1/admin/specs", json={"spec": good, "build": False},
                         headers=headers(served, "inference"))
    assert refused.status_code == 403
    reply = httpx.post(f"{served.url}/v1/admin/specs", json={"spec": good, "build": False}, headers=headers(served))
    assert reply.status_code == 200, reply.text
    written = served.registry.root.parent / "specs" / "added-by-ui.yaml"
    assert reply.json() == {"object": "spec", "name": "added-by-ui", "path": str(written), "build": None}
    assert written.read_text() == good


def test_an_upload_that_is_not_gguf_is_refused(served):
    reply = httpx.post(f"{served.url}/v1/admin/uploads", content=b"not a model", headers=headers(served))
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_file"
