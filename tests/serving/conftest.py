"""A real gunicorn server (uvicorn workers) on 127.0.0.1 serving a registry that holds the tiny model."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from factory.registry import Registry
from factory.services import SERVER_COMMAND, free_port
from tests.fixtures.processes import stop_process_group
from tests.fixtures.smollm2 import requantize
from tests.fixtures.tiny_model import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
SERVE = {"aliases": ["default"], "context_length": 2048, "defaults": {"temperature": 0.7, "max_tokens": 64}}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    registry: Registry
    log: Path

    @property
    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    @property
    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120)

    def metric(self, name: str, model: str) -> float:
        for line in httpx.get(f"{self.url}/metrics").text.splitlines():
            if line.startswith(f'{name}{{model="{model}"}}'):
                return float(line.split()[-1])
        return 0.0


def mlx_float16(tmp_path_factory, seed: int) -> Path:
    """The tiny model converted to an MLX float16 artifact (conversion is the pipeline's job; here it is setup)."""
    from mlx_lm import convert

    base = tmp_path_factory.mktemp(f"mlx-{seed}")
    convert(hf_path=str(make_tiny_model(base / "hf", seed=seed)), mlx_path=str(base / "mlx"), dtype="float16")
    return base / "mlx"


@pytest.fixture(scope="session")
def tiny_mlx(tmp_path_factory) -> Path:
    return mlx_float16(tmp_path_factory, seed=0)


@pytest.fixture(scope="session")
def tiny_mlx_v2(tmp_path_factory) -> Path:
    return mlx_float16(tmp_path_factory, seed=1)


def start_server(root: Path, artifact: Path, format_key: str = "mlx-float16", serve: dict | None = None,
                 port: int | None = None, **env: str) -> Server:
    """`port`: a given one (a server restarted where it was), else a free one."""
    registry = Registry(root / "registry")
    if not registry.list("tiny"):  # a restart serves what its registry holds
        registry.publish("tiny", {format_key: artifact}, serve=serve or SERVE)
    port = port or free_port()
    log = root / "server.log"
    environment = {**os.environ, "FACTORY_ROOT": str(root), "FACTORY_REGISTRY": str(registry.root),
                   "FACTORY_SERVE_PORT": str(port), "FACTORY_SERVE_MODELS_POLL_S": "0.2", **env}
    process = subprocess.Popen(SERVER_COMMAND,
                               cwd=ROOT, env=environment, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=30).status_code == 200:  # /ready loads the default model
                return Server(url=url, process=process, registry=registry, log=log)
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.3)
    stop_server(process)
    raise RuntimeError("server did not become ready:\n" + log.read_text())


def stop_server(process: subprocess.Popen) -> None:
    stop_process_group(process)


@contextmanager
def server_with_worker(root: Path, artifact: Path, *server_args, **env: str) -> Iterator[Server]:
    """The flows deployed, a Prefect worker and a server sharing one factory root (needs the `prefect_server`
    fixture): what builds and fine-tunes started through the API run on."""
    environment = {**os.environ, "FACTORY_ROOT": str(root)}
    deployed = subprocess.run([sys.executable, "-m", "factory.cli", "deploy"], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=120)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    worker = subprocess.Popen([sys.executable, "-m", "factory.cli", "worker"], cwd=ROOT, env=environment,
                              stdout=open(root / "worker.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        server = start_server(root, artifact, *server_args, **env)
        try:
            yield server
        finally:
            stop_server(server.process)
    finally:
        stop_process_group(worker)


@pytest.fixture(scope="session")
def smollm2_q8(tmp_path_factory) -> Path:
    """The real SmolLM2's q8_0 artifact (a folder holding the file), as the pipeline builds it from the package."""
    folder = tmp_path_factory.mktemp("smollm2") / "gguf-q8_0"
    folder.mkdir()
    requantize(folder / "smollm2-q8_0.gguf")
    return folder


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory, smollm2_q8) -> Server:
    """One gunicorn serving the real SmolLM2 (llama.cpp, q8_0) as `tiny` and `default`, shared by the modules that
    judge answers on it; a test that changes the server's state (keys) starts its own."""
    running = start_server(tmp_path_factory.mktemp("smollm2-server"), smollm2_q8, "gguf-q8_0",
                           serve={"aliases": ["default"], "context_length": 2048})
    yield running
    stop_server(running.process)


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory, tiny_model) -> Path:
    """The tiny model exported to GGUF (f16), as the pipeline's export step writes it."""
    from formats.gguf.export import export_gguf

    directory = tmp_path_factory.mktemp("gguf") / "gguf-f16"
    directory.mkdir()
    export_gguf(tiny_model, directory / "model-f16.gguf", "f16")
    return directory


@pytest.fixture(scope="session", params=["mlx", "llamacpp"])
def server(request, tmp_path_factory, tiny_mlx) -> Server:
    """Shared by tests that do not change the registry; every test using it runs once per engine."""
    artifact, key = (tiny_mlx, "mlx-float16") if request.param == "mlx" else (request.getfixturevalue("tiny_gguf"),
                                                                             "gguf-f16")
    running = start_server(tmp_path_factory.mktemp("served"), artifact, key, FACTORY_SERVE_MODELS_MAX_BATCH="8",
                           FACTORY_SERVE_MODELS_QUEUE_SIZE="4",
                           FACTORY_SERVE_REQUESTS_MAX_BODY_BYTES=str(1 << 20),
                           FACTORY_SERVE_REQUESTS_READ_TIMEOUT_S="3")
    assert running.client.models.retrieve("tiny").model_extra["engine"] == request.param
    yield running
    stop_server(running.process)


@pytest.fixture
def fresh_server(tmp_path, tiny_mlx) -> Server:
    """A server of its own, for tests that publish."""
    running = start_server(tmp_path, tiny_mlx)
    yield running
    stop_server(running.process)
