"""Speculative decoding on the llama.cpp engine: at temperature 0 the output with prompt lookup or a draft model is
token for token the output without, drafts are really proposed and accepted (several tokens per step), and
max_tokens still holds exactly. On the tiny model and on the real SmolLM2-135M (q4_0 drafting for its f16)."""
from __future__ import annotations

from pathlib import Path

import pytest

from serving.inference.local.engines import drafting
from serving.inference.local.engines.base import EngineOptions
from serving.inference.local.engines.llamacpp import LlamaCppEngine
from tests.fixtures.engine_runs import Speculation, generate, one
from tests.fixtures.smollm2 import requantize

CODE_EDIT = ("Rename the variable total to count in this code:\n"
             "def add(values):\n    total = 0\n    for value in values:\n        total += value\n    return total\n")


def engine(artifact: Path, max_batch: int = 2, **options) -> LlamaCppEngine:
    return LlamaCppEngine.load(artifact, max_batch=max_batch, context_length=1024, options=EngineOptions(**options))


@pytest.fixture(scope="module")
def tiny_q8(tmp_path_factory, tiny_model) -> Path:
    """The tiny model's q8_0 GGUF: a quantized draft of the same model."""
    from formats.gguf.export import export_gguf

    directory = tmp_path_factory.mktemp("gguf-q8")
    export_gguf(tiny_model, directory / "model-q8_0.gguf", "q8_0")
    return directory


def prompts(target: LlamaCppEngine) -> list[list[int]]:
    texts = [CODE_EDIT, "Tell me about paths and files, then about paths and files again."]
    return [target.encode(target.render_chat([{"role": "user", "content": text}])) for text in texts]


def test_prompt_lookup_gives_the_greedy_output_and_accepts_drafts(tiny_gguf):
    plain, lookup = engine(tiny_gguf), engine(tiny_gguf, prompt_lookup=True)
    speculation = Speculation()
    for prompt in prompts(plain):
        expected = one(plain, prompt, max_tokens=64)
        run = one(lookup, prompt, speculation, max_tokens=64)
        assert run.tokens == expected.tokens and run.finish_reason == expected.finish_reason
    assert speculation.methods == {"ngram"} and speculation.drafted > 0 and speculation.accepted > 0
    # both at once in one batch too
    assert [r.tokens for r in generate(lookup, prompts(plain), max_tokens=64)] == \
        [r.tokens for r in generate(plain, prompts(plain), max_tokens=64)]
    plain.close()
    lookup.close()


def test_a_draft_model_gives_the_greedy_output_and_several_tokens_per_step(tiny_gguf, tiny_q8, monkeypatch):
    # The random tiny model is never sure of a token (flat distributions): draft whatever its argmax is
    monkeypatch.setattr(drafting, "P_MIN", 0.0)
    plain, drafted = engine(tiny_gguf), engine(tiny_gguf, draft=tiny_q8)
    speculation = Speculation()
    for prompt in prompts(plain):
        run = one(drafted, prompt, speculation, max_tokens=64)
        assert run.tokens == one(plain, prompt, max_tokens=64).tokens
    assert speculation.methods == {"draft"} and speculation.accepted / speculation.drafted > 0.5
    assert max(run.outputs_per_step) > 1  # accepted drafts come out as several tokens in one step
    plain.close()
    drafted.close()


def test_speculation_never_passes_max_tokens_and_samples_with_a_seed(tiny_gguf):
    lookup = engine(tiny_gguf, prompt_lookup=True, draft_tokens=16)
    for max_tokens in (1, 2, 5, 17):
        run = one(lookup, prompts(lookup)[0], max_tokens=max_tokens)
        assert len(run.tokens) <= max_tokens and (run.finish_reason == "stop" or len(run.tokens) == max_tokens)
    lookup.close()
    # a seed still fixes the output, on engines in the same state (a cached prefix or a different batch changes the
    # logits in their last bits, which can move a sampled token: seeds are best effort, as OpenAI says)
    sampled = []
    for _ in range(2):
        lookup = engine(tiny_gguf, prompt_lookup=True)
        sampled.append(one(lookup, prompts(lookup)[1], max_tokens=32, temperature=0.8, top_p=0.9, seed=3).tokens)
        lookup.close()
    assert sampled[0] == sampled[1]


def test_a_draft_with_another_vocabulary_is_refused(tiny_gguf, tmp_path):
    from formats.gguf.export import export_gguf
    from tests.fixtures.tiny_model import make_tiny_model

    other = make_tiny_model(tmp_path / "other", vocab_size=512)
    export_gguf(other, tmp_path / "other.gguf", "f16")
    with pytest.raises(ValueError, match="same vocabulary"):
        engine(tiny_gguf, draft=tmp_path / "other.gguf")


# ---------------------------------------------------------------- the real SmolLM2-135M


@pytest.fixture(scope="module")
def smollm2_pair(tmp_path_factory) -> tuple[Path, Path]:
    """SmolLM2-135M-Instruct from the installed package: its f16 (served) and q4_0 (draft), both from the Q4_1 file."""
    folder = tmp_path_factory.mktemp("smollm2-pair")
    return (requantize(folder / "smollm2-f16.gguf", "LLAMA_FTYPE_MOSTLY_F16"),
            requantize(folder / "smollm2-q4_0.gguf", "LLAMA_FTYPE_MOSTLY_Q4_0"))


def test_smollm2_q4_0_drafting_for_its_f16_and_prompt_lookup_keep_the_greedy_output(smollm2_pair):
    f16, q4_0 = smollm2_pair
    plain = engine(f16, prefix_cache=False)
    prompt = prompts(plain)[0]
    expected = one(plain, prompt, max_tokens=40)
    plain.close()
    drafted, speculation = engine(f16, draft=q4_0), Speculation()
    assert one(drafted, prompt, speculation, max_tokens=40).tokens == expected.tokens
    assert speculation.methods == {"draft"} and speculation.accepted > 0
    drafted.close()
    both, speculation = engine(f16, draft=q4_0, prompt_lookup=True), Speculation()
    first, again = one(both, prompt, speculation, max_tokens=40), one(both, prompt, max_tokens=40)
    assert first.tokens == again.tokens == expected.tokens and again.cached_tokens == len(prompt) - 1
    assert "ngram" in speculation.methods and speculation.accepted > 0
    both.close()
