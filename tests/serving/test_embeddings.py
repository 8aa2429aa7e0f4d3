"""The real thing: gunicorn serving all-MiniLM-L6-v2 from its GGUF (llama.cpp) beside the tiny chat model, called
through the openai SDK. Its vectors must match the original model's (transformers on the source weights) in both
encodings, paraphrases must rank above unrelated sentences, and concurrent requests must all get their own vectors.
"""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest

from factory.registry import Registry
from formats.embeddings.check import PARAPHRASES, SENTENCES, cosine_rows, paraphrase_accuracy
from formats.embeddings.reference import reference_embeddings
from formats.embeddings.settings import resolve_settings
from tests.fixtures.minilm import embedding_artifact, minilm_source
from tests.serving.conftest import start_server, stop_server

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_mlx):
    root = tmp_path_factory.mktemp("embedding-server")
    artifact, limits = embedding_artifact(minilm_source(), root / "gguf-f16", {"gguf": {"type": "f16"}})
    Registry(root / "registry").publish(MODEL, {"gguf-f16": artifact}, embedding=limits)
    running = start_server(root, tiny_mlx)  # adds the chat model `tiny` (alias default) and serves both
    yield running
    stop_server(running.process)


@pytest.fixture(scope="module")
def original():
    source = minilm_source()
    return reference_embeddings(source, resolve_settings(source), SENTENCES)


def test_vectors_match_the_original_model_in_both_encodings(server, original):
    client = server.client
    as_floats = client.embeddings.create(model=MODEL, input=SENTENCES, encoding_format="float")
    as_base64 = client.embeddings.create(model=MODEL, input=SENTENCES)  # the SDK's default: base64, decoded
    for response in (as_floats, as_base64):
        vectors = np.array([item.embedding for item in response.data], dtype=np.float32)
        assert vectors.shape == (len(SENTENCES), 384)
        assert cosine_rows(vectors, original).min() >= 0.99
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.array_equal([d.embedding for d in as_floats.data], [d.embedding for d in as_base64.data])
    assert as_floats.usage.prompt_tokens > len(SENTENCES) * 3 and as_floats.model == MODEL


def test_paraphrases_rank_above_unrelated_sentences(server):
    response = server.client.embeddings.create(model=MODEL, input=SENTENCES)
    vectors = np.array([item.embedding for item in response.data])
    assert paraphrase_accuracy(vectors) == 1.0
    query, expected = PARAPHRASES[2]  # the password question
    documents = [text for text in SENTENCES if text != query]
    reranked = httpx.post(f"{server.url}/v1/rerank", json={"model": MODEL, "query": query, "documents": documents,
                                                          "top_n": 2}, timeout=60).json()
    assert documents[reranked["results"][0]["index"]] == expected and len(reranked["results"]) == 2
    assert reranked["results"][0]["relevance_score"] > reranked["results"][1]["relevance_score"] + 0.1


def test_concurrent_requests_each_get_their_own_vectors(server, original):
    async def one(client, index):
        response = await client.embeddings.create(model=MODEL, input=[SENTENCES[index]], encoding_format="float")
        return response.data[0].embedding

    async def all_at_once():
        client = server.async_client
        return await asyncio.gather(*(one(client, i) for i in range(len(SENTENCES))))

    vectors = np.array(asyncio.run(all_at_once()), dtype=np.float32)
    assert cosine_rows(vectors, original).min() >= 0.99


def test_models_say_which_model_embeds_and_chat_models_refuse(server):
    models = {m.id: m.model_extra for m in server.client.models.list().data}
    assert models[MODEL]["task"] == "embedding" and models["tiny"]["task"] == "chat"
    assert models[MODEL]["embedding"]["dimensions"] == 384 and models[MODEL]["engine"] == "llamacpp"
    with pytest.raises(openai.BadRequestError) as refused:
        server.client.embeddings.create(model="tiny", input="hello")
    assert refused.value.body["code"] == "model_not_supported"
    too_long = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": ["ok", "word " * 300]})
    assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "input[1]"
    assert "has 302 tokens; all-minilm-l6-v2@1 embeds at most 256" in too_long.json()["error"]["message"]


def test_the_mlx_artifact_serves_the_same_vectors_in_process(tmp_path, original):
    """The real pool and loader choosing the MLX runtime (`serve.engine: mlx`), in-process over ASGI."""
    from factory.server_config import ServerConfig
    from serving.app import create_app
    from serving.inference.pool import ModelPool

    artifact, limits = embedding_artifact(minilm_source(), tmp_path / "mlx-float32", {"mlx": {"dtype": "float32"}})
    registry = Registry(tmp_path / "registry")
    registry.publish(MODEL, {"mlx-float32": artifact}, serve={"engine": "mlx"}, embedding=limits)
    config = ServerConfig(root=tmp_path, registry=registry.root)
    pool = ModelPool(registry, config.models)

    async def embed() -> list:
        await pool.start()
        app = create_app(config, models=pool)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as http:
            client = openai.AsyncOpenAI(base_url="http://in-process/v1", api_key="-", http_client=http)
            response = await client.embeddings.create(model=MODEL, input=SENTENCES)
            described = (await client.models.retrieve(MODEL)).model_extra
        await pool.stop()
        return [item.embedding for item in response.data], described

    vectors, described = asyncio.run(embed())
    assert described["engine"] == "mlx" and described["task"] == "embedding"
    assert cosine_rows(np.array(vectors, dtype=np.float32), original).min() >= 0.99
