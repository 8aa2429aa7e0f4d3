"""The prefix cache on both engines: a repeated system prompt or conversation prefix reuses KV state (reported as
`cached_tokens` on a sequence's first output), and greedy output is token for token what the engine gives with the
cache off."""
from __future__ import annotations

import pytest

from serving.inference.local.engines.base import EngineOptions
from serving.inference.local.engines.llamacpp import LlamaCppEngine
from serving.inference.local.engines.mlx import MlxEngine
from serving.inference.types import SamplingParams
from tests.fixtures.engine_runs import generate, one

SYSTEM = "You are a careful assistant who answers in short sentences about files and paths. " * 6


def load(kind: str, artifact, cache: bool, max_batch: int = 3):
    options = EngineOptions(prefix_cache=cache)
    if kind == "llamacpp":
        return LlamaCppEngine.load(artifact, max_batch=max_batch, context_length=1024, options=options)
    return MlxEngine.load(artifact, max_batch, 1024, options)


@pytest.fixture(params=["llamacpp", "mlx"])
def engines(request, tiny_gguf, tiny_mlx):
    artifact = tiny_gguf if request.param == "llamacpp" else tiny_mlx
    cached, plain = load(request.param, artifact, True), load(request.param, artifact, False)
    yield cached, plain
    cached.close()
    plain.close()


def chat(engine, *turns: str, system: str = SYSTEM) -> list[int]:
    messages = [{"role": "system", "content": system}]
    for index, text in enumerate(turns):
        messages.append({"role": "user" if index % 2 == 0 else "assistant", "content": text})
    return engine.encode(engine.render_chat(messages))


def test_a_repeated_system_prompt_is_reused_and_greedy_output_is_unchanged(engines):
    cached, plain = engines
    first, second = chat(cached, "Where is the file?"), chat(cached, "What is a path?")
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert shared > 100  # the system prompt and the user turn's opening markup

    runs = [one(cached, first), one(cached, second), one(cached, first)]
    assert [run.cached_tokens for run in runs] == [0, shared, len(first) - 1]
    assert [run.tokens for run in runs] == [one(plain, p).tokens for p in (first, second, first)]
    assert all(one(plain, p).cached_tokens in (0, None) for p in (first, second))


def test_a_conversation_reuses_its_earlier_turns(engines):
    cached, plain = engines
    turn1 = chat(cached, "List three paths.")
    one(cached, turn1)
    turn2 = chat(cached, "List three paths.", "Here they are.", "Now a fourth.")
    run = one(cached, turn2)
    assert run.cached_tokens >= len(turn1) - 1
    assert run.tokens == one(plain, turn2).tokens


def test_sequences_sharing_a_prefix_in_one_batch_match_the_uncached_engine(engines):
    cached, plain = engines
    one(cached, chat(cached, "warm the cache"))
    prompts = [chat(cached, question) for question in ("Where is the file?", "What is a path?", "Name a folder.")]
    runs = generate(cached, prompts)
    assert all(run.cached_tokens > 100 for run in runs)
    assert [run.tokens for run in runs] == [run.tokens for run in generate(plain, prompts)]


def test_llama_cpp_shares_a_prefix_that_a_busy_sequence_holds(tiny_gguf):
    """No finished request holds the system prompt yet: the second sequence takes it from the first, which is
    still generating (its cells are shared, not recomputed)."""
    cached, plain = load("llamacpp", tiny_gguf, True), load("llamacpp", tiny_gguf, False)
    first, second = chat(cached, "Where is the file?"), chat(cached, "What is a path?")
    uid = cached.insert(first, SamplingParams(max_tokens=200, temperature=0, top_p=1.0))
    cached.step()  # the first sequence decodes its prompt and is generating from now on
    run = one(cached, second)
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert run.cached_tokens == shared and run.tokens == one(plain, second).tokens
    cached.remove([uid])
    cached.close()
    plain.close()
