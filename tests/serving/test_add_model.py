"""Adding a model through the web UI's API, for real: a `.gguf` file uploaded to a server is built by the build
deployment on a Prefect worker (an implicit spec, as `factory serve FILE` writes: converted, validated, published),
told on the events WebSocket as the build progresses and as it is published, then served through the openai SDK."""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
import yaml
from websockets.sync.client import connect

from formats.gguf.export import export_gguf
from tests.serving.conftest import Server, server_with_worker
from tests.serving.test_live_events import next_event

UPLOAD_LIMIT = 2 << 20  # the tiny model's GGUF is ~0.4 MB


@pytest.fixture(scope="module")
def stack(tmp_path_factory, tiny_gguf, prefect_server):
    """Deployments registered, a worker and a server sharing one factory root."""
    root = tmp_path_factory.mktemp("add-model")
    with server_with_worker(root, tiny_gguf, "gguf-f16",
                            FACTORY_SERVE_REQUESTS_MAX_UPLOAD_BYTES=str(UPLOAD_LIMIT)) as server:
        yield server


def test_an_uploaded_gguf_is_built_published_and_served(stack: Server, tiny_model, tmp_path):
    model_file = tmp_path / "Uploaded-Tiny.F16.gguf"
    export_gguf(tiny_model, model_file, "f16")
    with connect(stack.url.replace("http://", "ws://") + "/v1/events", proxy=None) as ws:  # no keys: no ticket
        assert json.loads(ws.recv(timeout=30))["type"] == "snapshot"
        with open(model_file, "rb") as f:
            reply = httpx.post(f"{stack.url}/v1/admin/uploads", files={"file": (model_file.name, f)}, timeout=120)
        assert reply.status_code == 200, reply.text
        written = reply.json()
        assert written["name"] == "uploaded-tiny.f16" and written["build"]["status"] == "queued"
        spec = yaml.safe_load(Path(written["path"]).read_text())
        assert spec["source"] == {"local": str(stack.registry.root.parent / "uploads" / "uploaded-tiny.f16.gguf")}
        published = next_event(ws, lambda e: e["type"] == "registry.published", timeout=300)
        assert published["ref"] == "uploaded-tiny.f16@1"
        succeeded = next_event(ws, lambda e: e["type"] == "job.progress" and e["job_id"] == written["build"]["id"]
                               and e["status"] == "succeeded", timeout=60)
        assert succeeded["kind"] == "build" and succeeded["spec"] == "uploaded-tiny.f16"
    build = httpx.get(f"{stack.url}/v1/builds/{written['build']['id']}").json()
    assert build["status"] == "succeeded" and build["spec"] == "uploaded-tiny.f16"
    assert written["build"]["id"] in [b["id"] for b in httpx.get(f"{stack.url}/v1/builds").json()["data"]]
    version = stack.registry.resolve("uploaded-tiny.f16")
    assert version.manifest()["report"]["formats"][0]["passed"]  # validated before it was published
    catalog = httpx.get(f"{stack.url}/v1/registry/models/uploaded-tiny.f16").json()
    assert catalog["versions"][0]["formats"][0]["quantization"] == "q8_0"
    deadline = time.monotonic() + 10  # the server's pool routes it on its next registry poll
    while "uploaded-tiny.f16" not in {m.id for m in stack.client.models.list().data}:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    answer = stack.client.chat.completions.create(model="uploaded-tiny.f16", max_tokens=4,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert answer.usage.completion_tokens > 0 and answer.system_fingerprint == "uploaded-tiny.f16@1"


def test_an_upload_past_the_limit_is_refused_and_leaves_nothing(stack: Server):
    def body():  # streamed (chunked, no Content-Length): refused as it passes the limit
        yield b"GGUF"
        for _ in range(4):
            yield b"\0" * (1 << 20)

    reply = httpx.post(f"{stack.url}/v1/admin/uploads?name=too-big", content=body(), timeout=60)
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "request_too_large"
    uploads = stack.registry.root.parent / "uploads"
    assert not (uploads / "too-big.gguf").exists() and not list(uploads.glob(".upload-*"))
    assert not (stack.registry.root.parent / "specs" / "too-big.yaml").exists()
