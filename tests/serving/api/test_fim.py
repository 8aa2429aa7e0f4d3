"""Fill-in-the-middle through /v1/completions in-process: the prompt built from the model's FIM tokens, the client's
text kept as plain text, the middle cut at the family's end tokens, whole and streamed, and the refusal on a model
without FIM tokens. A scripted engine whose vocabulary has StarCoder's FIM tokens plays the code model."""
from __future__ import annotations

import httpx
import openai
import pytest

from factory.registry import Registry
from factory.server_config import ServerConfig
from serving.app import create_app
from serving.inference.pool import ModelPool
from serving.api.schemas.responses import ErrorBody
from tests.fixtures.scripted_engine import SPECIAL, ScriptedEngine

pytestmark = pytest.mark.anyio

FIM = {"<fim_prefix>": 0xF0010, "<fim_suffix>": 0xF0011, "<fim_middle>": 0xF0012, "<|endoftext|>": 0xF0013,
       "<file_sep>": 0xF0014}
MIDDLE = "    return a + b\n"
PREFIX, SUFFIX = "def add(a, b):\n", "\nprint(add(1, 2))\n"


class FimEngine(ScriptedEngine):
    """The scripted engine with FIM tokens; it answers MIDDLE, then a file separator, then text that must not
    arrive (a model trained on repositories goes on with the next file)."""

    special = {**SPECIAL, **FIM}
    special_texts = frozenset(special)

    def __init__(self):
        super().__init__(reply=MIDDLE + chr(FIM["<file_sep>"]) + "next_file.py")

    def encode(self, text: str, *, special: bool = True, at_start: bool = True) -> list[int]:
        tokens, position = [], 0
        while position < len(text):
            match = next((t for t in self.special if text.startswith(t, position)), None) if special else None
            tokens.append(self.special[match] if match else ord(text[position]))
            position += len(match) if match else 1
        return tokens


def pool_serving(root, engine_class) -> tuple[ModelPool, ServerConfig]:
    artifact = root / "artifact"
    artifact.mkdir(parents=True, exist_ok=True)
    (artifact / "weights.bin").write_bytes(b"\0" * 64)
    registry = Registry(root / "registry")
    registry.publish("coder", {"mlx-float16": artifact}, serve={"aliases": ["default"], "context_length": 256})
    config = ServerConfig(root=root, registry=registry.root, models={"max_batch": 4, "queue_size": 2})
    return ModelPool(registry, config.models, engine_loader=lambda v, s, b: (engine_class(), v.formats[0])), config


@pytest.fixture
async def coder(tmp_path):
    pool, config = pool_serving(tmp_path, FimEngine)
    await pool.start()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(config, models=pool)),
                                 base_url="http://in-process") as client:
        yield client, pool
    await pool.stop()


def sdk_of(client) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://in-process/v1", api_key="unused", http_client=client, max_retries=0)


def plain(text: str) -> list[int]:
    return [ord(c) for c in text]


async def test_the_middle_is_asked_with_the_models_fim_tokens_and_ends_at_its_file_separator(coder):
    client, pool = coder
    sdk = sdk_of(client)
    reply = await sdk.completions.create(model="coder", prompt=PREFIX, suffix=SUFFIX, max_tokens=64)
    assert reply.choices[0].text == MIDDLE and reply.choices[0].finish_reason == "stop"
    engine = pool.loaded["coder@1"].engine
    assert engine.prompts[-1] == ([FIM["<fim_prefix>"]] + plain(PREFIX) + [FIM["<fim_suffix>"]] + plain(SUFFIX)
                                  + [FIM["<fim_middle>"]])
    assert reply.usage.prompt_tokens == len(engine.prompts[-1]) and reply.usage.completion_tokens == len(MIDDLE)

    streamed = await sdk.completions.create(model="coder", prompt=PREFIX, suffix=SUFFIX, max_tokens=64, stream=True,
                                            stream_options={"include_usage": True})
    chunks = [chunk async for chunk in streamed]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == MIDDLE
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].usage.prompt_tokens == len(engine.prompts[-1])


async def test_fim_markers_in_the_clients_code_stay_text(coder):
    client, pool = coder
    prefix = 'marker = "<fim_middle>"\n'
    await sdk_of(client).completions.create(model="coder", prompt=prefix, suffix="<|endoftext|>", max_tokens=4)
    prompt = pool.loaded["coder@1"].engine.prompts[-1]
    assert [token for token in prompt if token >= 0xF0000] == [FIM["<fim_prefix>"], FIM["<fim_suffix>"],
                                                               FIM["<fim_middle>"]]
    assert prompt[1:1 + len(prefix)] == plain(prefix)


async def test_a_plain_completion_on_a_fim_model_is_unchanged(coder):
    client, pool = coder
    reply = await sdk_of(client).completions.create(model="coder", prompt="<fim_prefix>x", max_tokens=4)
    # a raw prompt is the client's own template (Continue writes the FIM markers itself): its markers are meant
    assert pool.loaded["coder@1"].engine.prompts[-1] == [FIM["<fim_prefix>"], ord("x")]
    assert reply.choices[0].finish_reason == "length"


async def test_a_model_without_fim_tokens_refuses_a_suffix_with_a_400(api, sdk, pool_and_registry):
    response = await api.post("/v1/completions", json={"model": "tiny", "prompt": PREFIX, "suffix": SUFFIX})
    assert response.status_code == 400
    error = ErrorBody.model_validate(response.json()).error.model_dump()  # OpenAI's error shape, exactly
    assert error["param"] == "suffix" and error["code"] == "fim_not_supported"
    assert "fill-in-the-middle" in error["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        await sdk.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, stream=True)
    assert refused.value.code == "fim_not_supported"
    # nothing follows the cursor: an ordinary completion, as an editor sends at the end of a file
    reply = await sdk.completions.create(model="tiny", prompt=PREFIX, suffix="", max_tokens=3)
    assert reply.choices[0].text == "Hel"
    assert pool_and_registry[0].loaded["tiny@1"].engine.prompts[-1] == plain(PREFIX)

