"""The embedding batcher alone: a request whose client left is dropped from the queue, a failing batch fails only
its own requests, large requests are split across batches in order, and each model's work stays on one thread."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serving.inference.local.embed_batcher import EmbeddingBatcher
from tests.fixtures.scripted_embedder import ScriptedEmbedder, counts

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend():
    return "asyncio"


def tokens(text: str) -> list[int]:
    return [ord(c) for c in text]


async def test_a_request_whose_client_left_is_not_embedded():
    runtime = ScriptedEmbedder()
    batcher = EmbeddingBatcher(runtime, queue_size=8)
    runtime.gate = threading.Event()
    running = asyncio.create_task(batcher.embed([tokens("first")]))
    while not batcher.decoding:
        await asyncio.sleep(0.01)
    left = asyncio.create_task(batcher.embed([tokens("gone")]))
    stays = asyncio.create_task(batcher.embed([tokens("stays")]))
    await asyncio.sleep(0.01)
    left.cancel()
    runtime.gate.set()
    await running
    assert np.allclose((await stays)[0], counts(tokens("stays")) / np.linalg.norm(counts(tokens("stays"))))
    embedded = ["".join(map(chr, t)) for batch in runtime.batches for t in batch]
    assert embedded == ["first", "stays"] and batcher.in_flight == 0
    batcher.close()


async def test_a_failing_batch_fails_only_its_requests():
    runtime = ScriptedEmbedder()
    batcher = EmbeddingBatcher(runtime, queue_size=8)
    original = runtime.pooled
    runtime.pooled = lambda batch: (_ for _ in ()).throw(RuntimeError("engine broke"))
    with pytest.raises(RuntimeError, match="engine broke"):
        await batcher.embed([tokens("a"), tokens("b")])
    runtime.pooled = original
    assert (await batcher.embed([tokens("c")])).shape == (1, 8)
    batcher.close()


async def test_a_large_request_is_split_into_batches_and_kept_in_order():
    runtime = ScriptedEmbedder(max_batch=4)
    batcher = EmbeddingBatcher(runtime, queue_size=8)
    texts = [f"text {i}" * (i + 1) for i in range(10)]
    vectors = await batcher.embed([tokens(t) for t in texts])
    assert [len(batch) for batch in runtime.batches] == [4, 4, 2] and batcher.steps == 3
    expected = np.stack([counts(tokens(t)) / np.linalg.norm(counts(tokens(t))) for t in texts])
    assert np.allclose(vectors, expected)
    batcher.close()


async def test_every_batch_runs_on_the_models_one_thread():
    runtime = ScriptedEmbedder(max_batch=1)
    seen = set()
    pooled = runtime.pooled
    runtime.pooled = lambda batch: seen.add(threading.get_ident()) or pooled(batch)
    batcher = EmbeddingBatcher(runtime, queue_size=8)
    await asyncio.gather(*(batcher.embed([tokens(f"x{i}")]) for i in range(6)))
    assert len(runtime.batches) == 6 and len(seen) == 1 and threading.get_ident() not in seen
    batcher.close()
