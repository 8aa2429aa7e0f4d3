"""In-process API tests: the real app, pool and scheduler, called over ASGI in the test's own event loop, with a
scripted engine in place of a model. Milliseconds per request.

httpx's ASGI transport rather than `falcon.testing`: the conductor disconnects a POST's client as soon as the
response starts, which cuts a server-sent event stream after its first event.
"""
from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from serving.app import create_app
from serving.logs import JsonFormatter
from tests.fixtures.redis_server import redis_server
from tests.fixtures.scripted_engine import scripted_pool


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server for the Redis rate-limit store, one per test module."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def log_lines():
    """JSON log lines of every factory logger while the test runs."""
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("factory")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def pool_and_registry(tmp_path):
    return scripted_pool(tmp_path)


@pytest.fixture
async def api(pool_and_registry):
    """An httpx client of the app; the pool is started and stopped as the ASGI lifespan would."""
    pool, _, config = pool_and_registry
    app = create_app(config, models=pool)
    await pool.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as client:
        yield client
    await pool.stop()


@pytest.fixture
def sdk(api) -> openai.AsyncOpenAI:
    """The official openai SDK over the same in-process transport."""
    return openai.AsyncOpenAI(base_url="http://in-process/v1", api_key="unused", http_client=api, max_retries=0)


def recording_sampling(pool):
    """The loaded scripted model's engine (load it with a request first), recording the sampling parameters of
    every sequence inserted from now on in `engine.params`."""
    engine = pool.loaded["tiny@1"].engine
    engine.params = []
    insert = engine.insert

    def recording(prompt, params):
        engine.params.append(params)
        return insert(prompt, params)

    engine.insert = recording
    return engine


def prompt_text(engine) -> str:
    """The text of the last prompt the scripted engine was given."""
    return "".join(map(engine.token_text, engine.prompts[-1]))


def sse_frames(result) -> list:
    """The JSON frames of a server-sent event stream, with `[DONE]` as a string."""
    frames = []
    for line in result.text.splitlines():  # result: an httpx response
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            frames.append(data if data == "[DONE]" else json.loads(data))
    return frames
