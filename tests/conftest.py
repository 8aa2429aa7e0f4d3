"""Session-wide fixtures: an offline guard, the tiny model, and the local hub."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

import pytest

from tests.fixtures.local_hub import LocalHub
from tests.fixtures.tiny_model import make_tiny_model

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


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
