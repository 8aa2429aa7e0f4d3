"""Session-wide fixtures: an offline guard, a real Prefect server, the tiny model, and the local hub.

The suite sets the environment it runs in. huggingface_hub reads its variables when it is imported (HF_HUB_OFFLINE,
common on offline machines, would make it refuse even the local hub) and Prefect reads its settings then too, so
before anything imports either, this module drops every inherited HF_*/PREFECT_* variable (and the older names
huggingface_hub still reads), then points Prefect at a private PREFECT_HOME and at the port where the session's
server will listen.
"""
from __future__ import annotations

import os
import sys

INHERITED_PREFIXES = ("HF_", "HUGGINGFACE_", "PREFECT_")
INHERITED_NAMES = ("TRANSFORMERS_OFFLINE",)  # huggingface_hub reads it as HF_HUB_OFFLINE
for _name in [name for name in os.environ if name.startswith(INHERITED_PREFIXES) or name in INHERITED_NAMES]:
    del os.environ[_name]
assert not {"huggingface_hub", "prefect"} & set(sys.modules), "imported before tests/conftest.py set the environment"

import ipaddress  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from factory.services import free_port, start_prefect_server  # noqa: E402
from factory.settings import Settings  # noqa: E402
from tests.fixtures.local_hub import LocalHub  # noqa: E402
from tests.fixtures.tiny_model import make_tiny_model  # noqa: E402

SESSION_ROOT = Path(tempfile.mkdtemp(prefix="factory-tests-"))
PREFECT_PORT = free_port()
os.environ.update({
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_HOME": str(SESSION_ROOT / "prefect"),
    "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(SESSION_ROOT / "prefect" / "results"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_API_URL": f"http://127.0.0.1:{PREFECT_PORT}/api",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
})


@pytest.fixture(scope="session")
def prefect_server():
    """One real Prefect server (SQLite) for the whole session, started on first use."""
    server = start_prefect_server(Settings.from_env({"FACTORY_ROOT": str(SESSION_ROOT)}), port=PREFECT_PORT)
    yield server
    server.stop()


@pytest.fixture
def factory_root(tmp_path, monkeypatch) -> Path:
    """A private FACTORY_ROOT (registry, runs, hub cache) for one test."""
    root = tmp_path / "factory"
    monkeypatch.setenv("FACTORY_ROOT", str(root))
    monkeypatch.delenv("FACTORY_REGISTRY", raising=False)
    return root


@pytest.fixture(scope="session", autouse=True)
def loopback_only():
    """Fail any test that tries to reach beyond 127.0.0.0/8 (the suite must never touch the internet)."""
    original = socket.socket.connect

    def guarded(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if not loopback:
                raise RuntimeError(f"test tried to reach {address!r}: only loopback is allowed")
        return original(sock, address)

    socket.socket.connect = guarded
    yield
    socket.socket.connect = original


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny Llama model in HF layout (read-only: copy it before changing it)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")


@pytest.fixture(scope="session")
def local_hub(tiny_model):
    """A local hub serving the tiny model as `tiny/llama`; HF_ENDPOINT points at it for the whole session."""
    with LocalHub() as hub:
        hub.add_repo("tiny/llama", tiny_model)
        previous = os.environ.get("HF_ENDPOINT")
        os.environ["HF_ENDPOINT"] = hub.url
        yield hub
        if previous is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = previous
