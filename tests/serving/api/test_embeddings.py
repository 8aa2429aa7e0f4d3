"""/v1/embeddings and /v1/rerank in-process, through the openai SDK and raw HTTP, with a scripted embedding runtime
(tests/fixtures/scripted_embedder.py: a text's vector counts its characters): every input shape, both encodings,
dimensions, usage, the limits as 400s, batching across concurrent requests, queueing, and chat/embedding refusals."""
from __future__ import annotations

import asyncio
import base64
import threading

import httpx
import numpy as np
import openai
import pytest

from serving.api.schemas.embeddings import EmbeddingList, RerankList
from serving.api.schemas.responses import ModelList
from serving.app import create_app
from tests.fixtures.scripted_embedder import DIMENSIONS, counts, embedding_pool, expected

pytestmark = pytest.mark.anyio


@pytest.fixture
def pool_and_registry(tmp_path):
    return embedding_pool(tmp_path)


def embedder(pool_and_registry):
    pool, *_ = pool_and_registry
    return pool.loaded["emb@1"].engine


async def test_one_string_through_the_sdk_in_both_encodings(sdk):
    floats = await sdk.embeddings.create(model="emb", input="hello world", encoding_format="float")
    [item] = floats.data
    assert item.index == 0 and item.object == "embedding" and floats.model == "emb"
    assert np.allclose(item.embedding, expected("hello world"), atol=1e-6)
    # The SDK asks for base64 unless told otherwise, and decodes it: the same vector
    default = await sdk.embeddings.create(model="emb", input="hello world")
    assert default.data[0].embedding == pytest.approx(item.embedding, abs=1e-7)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == len("hello world")


async def test_base64_is_little_endian_float32(api):
    body = (await api.post("/v1/embeddings", json={"model": "emb", "input": ["abc", "xyz"],
                                                   "encoding_format": "base64"})).json()
    EmbeddingList.model_validate(body)
    vectors = [np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in body["data"]]
    assert np.allclose(vectors, [expected("abc"), expected("xyz")], atol=1e-6)


async def test_lists_and_token_arrays_keep_their_order(sdk):
    texts = ["the cat", "a dog barks", "zzz"]
    listed = await sdk.embeddings.create(model="emb", input=texts, encoding_format="float")
    assert [d.index for d in listed.data] == [0, 1, 2]
    assert np.allclose([d.embedding for d in listed.data], [expected(t) for t in texts], atol=1e-6)
    assert listed.usage.prompt_tokens == sum(map(len, texts))
    tokens = [[ord(c) for c in t] for t in texts]
    one = await sdk.embeddings.create(model="emb", input=tokens[1], encoding_format="float")
    many = await sdk.embeddings.create(model="emb", input=tokens, encoding_format="float")
    assert np.allclose(one.data[0].embedding, expected(texts[1]), atol=1e-6)
    assert np.allclose([d.embedding for d in many.data], [d.embedding for d in listed.data], atol=1e-6)


async def test_dimensions_truncate_and_renormalise_where_the_model_allows_it(sdk, api):
    short = await sdk.embeddings.create(model="emb", input="hello world", dimensions=4, encoding_format="float")
    vector = np.array(short.data[0].embedding)
    assert vector.shape == (4,) and np.isclose(np.linalg.norm(vector), 1)
    assert np.allclose(vector, expected("hello world", 4), atol=1e-6)
    full = await sdk.embeddings.create(model="emb", input="hello world", dimensions=DIMENSIONS)
    assert len(full.data[0].embedding) == DIMENSIONS
    refused = await api.post("/v1/embeddings", json={"model": "emb", "input": "x", "dimensions": 3})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "dimensions" and "8, 4" in refused.json()["error"]["message"]


@pytest.mark.parametrize("body, param, code, words", [
    ({"input": ["a"] * 7}, "input", "too_many_inputs", "7 inputs in one request; emb@1 takes at most 6"),
    ({"input": ["short", "x" * 33]}, "input[1]", "context_length_exceeded", "input[1] has 33 tokens"),
    ({"input": "x" * 33}, "input", "context_length_exceeded", "input has 33 tokens"),
    ({"input": [[1, 2], [0x110000]]}, "input[1]", None, "token ids must be between 0 and 1114111"),
    ({"input": ""}, "input", None, "an empty string cannot be embedded"),
    ({"input": []}, "input", None, "must be a string, a list of strings, an array of token ids, or a list of"),
    ({"input": ["a", ""]}, "input[1]", None, "an empty string cannot be embedded"),
    ({"input": [[]]}, "input[0]", None, "an empty token array cannot be embedded"),
    ({"input": [[1], [-1]]}, "input[1]", None, "token ids are non-negative integers"),
    ({"input": [1.5, 2]}, "input[0]", None, "a float is not a string, a token id or a token array"),
    ({"input": [True]}, "input[0]", None, "a bool is not a string"),
    ({"input": ["a", [1]]}, "input[1]", None, "every item of a list input is of one kind"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", None, "'float' or 'base64'"),
    ({"input": "x", "dimensions": 0}, "dimensions", None, "greater than or equal to 1"),
])
async def test_limits_and_malformed_inputs_are_400s_naming_the_field(api, body, param, code, words):
    response = await api.post("/v1/embeddings", json={"model": "emb", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == code and error["type"] == "invalid_request_error"
    assert words in error["message"]


async def test_chat_models_do_not_embed_and_embedding_models_do_not_chat(sdk):
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.embeddings.create(model="tiny", input="hi")
    error = refused.value.body
    assert error["code"] == "model_not_supported" and error["param"] == "model"
    assert "tiny@1 is a chat model; it does not produce embeddings" in error["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.chat.completions.create(model="emb", messages=[{"role": "user", "content": "hi"}])
    assert "emb@1 is an embedding model: it serves /v1/embeddings and /v1/rerank" in refused.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        await sdk.embeddings.create(model="nope", input="hi")


async def test_models_say_which_model_embeds(sdk, api):
    listing = (await api.get("/v1/models")).json()
    ModelList.model_validate(listing)
    tasks = {m["id"]: m["task"] for m in listing["data"]}
    assert tasks == {"default": "chat", "tiny": "chat", "emb": "embedding", "embeddings": "embedding"}
    emb = (await sdk.models.retrieve("emb")).model_extra
    assert emb["embedding"] == {"dimensions": 8, "allowed_dimensions": [8, 4], "pooling": "mean", "normalized": True,
                                "max_input_tokens": 32, "max_inputs": 6}
    assert emb["context_length"] == 32 and "embedding" not in (await sdk.models.retrieve("tiny")).model_extra


async def test_concurrent_requests_share_batches(sdk, pool_and_registry):
    await sdk.embeddings.create(model="emb", input="warm")  # load the model
    runtime, batcher = embedder(pool_and_registry), pool_and_registry[0].loaded["emb@1"].scheduler
    runtime.gate, runtime.batches = threading.Event(), []
    inputs = [["a1", "a2"], ["b0"], ["b1"], ["b2"], ["c1", "c2", "c3"]]
    first = asyncio.create_task(sdk.embeddings.create(model="emb", input=inputs[0], encoding_format="float"))
    while not batcher.decoding:  # the first request's batch is running, held at the gate
        await asyncio.sleep(0.01)
    others = [asyncio.create_task(sdk.embeddings.create(model="emb", input=texts, encoding_format="float"))
              for texts in inputs[1:]]
    while batcher.waiting < 6:  # everything else has queued behind it
        await asyncio.sleep(0.01)
    runtime.gate.set()
    results = await asyncio.gather(first, *others)
    batches = [["".join(map(chr, tokens)) for tokens in batch] for batch in runtime.batches]
    assert batches[0] == ["a1", "a2"] and [len(batch) for batch in batches] == [2, 4, 2]
    assert sorted(sum(batches, [])) == sorted(sum(inputs, []))
    assert len({text[0] + (text[1] if text[0] == "b" else "") for text in batches[1]}) >= 2  # several requests
    for result, texts in zip(results, inputs):
        assert np.allclose([d.embedding for d in result.data], [expected(t) for t in texts], atol=1e-6)


async def test_a_full_queue_is_a_429(tmp_path):
    pool, _, config = embedding_pool(tmp_path, models={"queue_size": 0})
    await pool.start()
    app = create_app(config, models=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as client:
        await client.post("/v1/embeddings", json={"model": "emb", "input": "warm"})
        model = pool.loaded["emb@1"]
        model.engine.gate = threading.Event()
        held = [asyncio.create_task(client.post("/v1/embeddings", json={"model": "emb", "input": f"x{i}"}))
                for i in range(4)]  # a batch's worth of requests may be in flight (4), and no queue beyond
        while model.scheduler.in_flight < 4:
            await asyncio.sleep(0.01)
        refused = await client.post("/v1/embeddings", json={"model": "emb", "input": "one too many"})
        model.engine.gate.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200] * 4
    await pool.stop()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["retry-after"] == "1"


async def test_rerank_orders_documents_by_similarity(api):
    texts = ["zzzz", "abd", "aabbcc", "ddd"]  # cosine to "abc" here: 0.58, 0.67, 1, 0
    documents = [*texts[:2], {"text": texts[2]}, texts[3]]
    response = await api.post("/v1/rerank", json={"model": "emb", "query": "abc", "documents": documents,
                                                  "top_n": 3, "return_documents": True})
    body = response.json()
    RerankList.model_validate(body)
    assert [r["index"] for r in body["results"]] == [2, 1, 0]
    scores = [float(expected(t) @ expected("abc")) for t in texts]
    assert [r["relevance_score"] for r in body["results"]] == pytest.approx([scores[2], scores[1], scores[0]])
    assert body["results"][0]["document"] == {"text": "aabbcc"} and body["model"] == "emb"
    assert body["usage"]["prompt_tokens"] == 3 + sum(map(len, texts))
    plain = (await api.post("/v1/rerank", json={"model": "emb", "query": "abc", "documents": texts})).json()
    assert [r["index"] for r in plain["results"]] == [2, 1, 0, 3] and "document" not in plain["results"][0]


async def test_rerank_limits_name_the_document(api):
    long = await api.post("/v1/rerank", json={"model": "emb", "query": "q", "documents": ["ok", "y" * 40]})
    assert long.status_code == 400 and long.json()["error"]["param"] == "documents[1]"
    many = await api.post("/v1/rerank", json={"model": "emb", "query": "q", "documents": ["d"] * 6})
    assert many.status_code == 400 and many.json()["error"]["param"] == "documents"
    chat = await api.post("/v1/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]})
    assert chat.status_code == 400 and chat.json()["error"]["code"] == "model_not_supported"


async def test_the_scripted_vectors_are_what_the_tests_expect():
    assert np.allclose(counts([0, 8, 1]), [2, 1, 0, 0, 0, 0, 0, 0])
