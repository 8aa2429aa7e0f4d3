"""Embedding artifacts of the real all-MiniLM-L6-v2 (GGUF f16 / q8_0 for llama.cpp, MLX float32 / float16 through
the own MLX BERT) and of the tiny decoder LM (last-token pooling), validated against the original model; settings
resolution from sentence-transformers files; batching that changes no vector; a damaged artifact caught."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from factory.spec import Embedding, Gates
from formats.embeddings.check import SENTENCES, cosine_rows, validate_embedding
from formats.embeddings.reference import reference_embeddings
from formats.embeddings.runtime import load_embedder
from formats.embeddings.settings import EmbeddingSourceError, resolve_settings
from tasks.validate import failures
from tests.fixtures.minilm import embedding_artifact, minilm_source

CHECKS = {"loads", "tokens", "min_cosine", "paraphrase_accuracy", "sentences_per_second"}
GGUF_CHECKS = {"reads", "architecture", "vocabulary", "pooling"}


def test_settings_come_from_the_sentence_transformers_files():
    source = minilm_source()
    assert resolve_settings(source) == {"architecture": "encoder", "model_type": "bert", "pooling": "mean",
                                        "normalize": True, "dimensions": 384, "max_tokens": 256}
    chosen = resolve_settings(source, pooling="cls", normalize=False)  # the spec wins
    assert (chosen["pooling"], chosen["normalize"]) == ("cls", False)


def test_settings_of_a_decoder_lm_and_what_is_refused(tmp_path, tiny_model):
    assert resolve_settings(tiny_model) == {"architecture": "decoder", "model_type": "llama", "pooling": "last",
                                            "normalize": True, "dimensions": 64, "max_tokens": 2048}
    with pytest.raises(EmbeddingSourceError, match="a decoder LM \\(llama\\) embeds with last-token pooling"):
        resolve_settings(tiny_model, pooling="mean")
    odd = tmp_path / "odd"
    shutil.copytree(minilm_source(), odd, ignore=shutil.ignore_patterns("*.safetensors"))
    (odd / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(EmbeddingSourceError, match="sets pooling_mode_max_tokens; supported: exactly one of"):
        resolve_settings(odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "model_type": "t5"}))
    with pytest.raises(EmbeddingSourceError, match="this one is 't5'"):
        resolve_settings(odd)


@pytest.mark.parametrize("entry, key, bound", [({"gguf": {"type": "f16"}}, "gguf-f16", 0.99),
                                               ({"gguf": {"type": "q8_0"}}, "gguf-q8_0", 0.98),
                                               ({"mlx": {"dtype": "float32"}}, "mlx-float32", 0.99),
                                               ({"mlx": {"dtype": "float16"}}, "mlx-float16", 0.99)])
def test_minilm_artifacts_match_the_original_model(tmp_path, entry, key, bound):
    artifact, limits = embedding_artifact(minilm_source(), tmp_path / key, entry)
    gguf_type = key.removeprefix("gguf-") if key.startswith("gguf") else None
    checks = validate_embedding(artifact, minilm_source(), limits, Gates(min_paraphrase_accuracy=1.0), gguf_type)
    verdicts = {c["name"]: c for c in checks}
    assert all(c["passed"] for c in checks), checks
    assert set(verdicts) == CHECKS | (GGUF_CHECKS if gguf_type else set())
    assert verdicts["tokens"]["value"] == f"{len(SENTENCES)}/{len(SENTENCES)}"
    assert verdicts["min_cosine"]["threshold"] == bound and verdicts["min_cosine"]["value"] >= 0.999
    assert verdicts["paraphrase_accuracy"]["value"] == 1.0 and verdicts["sentences_per_second"]["value"] > 0


def test_a_damaged_artifact_fails_the_cosine_gate(tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(minilm_source(), damaged)
    weights = load_file(damaged / "model.safetensors")
    name = "encoder.layer.2.intermediate.dense.weight"
    weights[name] = np.random.default_rng(0).permutation(weights[name])  # rows shuffled: same values, wrong places
    save_file(weights, damaged / "model.safetensors")
    artifact, limits = embedding_artifact(damaged, tmp_path / "gguf-f16", {"gguf": {"type": "f16"}})
    report = {"format": "gguf-f16", "checks": validate_embedding(artifact, minilm_source(), limits, Gates(), "f16")}
    [problem] = [line for line in failures([report]) if "min_cosine" in line]
    assert problem.startswith("gguf-f16: min_cosine 0.") and "< min 0.99" in problem


@pytest.mark.parametrize("entry", [{"gguf": {"type": "f16"}}, {"mlx": {"dtype": "float32"}}])
def test_a_batch_gives_each_input_the_vector_it_gets_alone(tmp_path, entry):
    artifact, _ = embedding_artifact(minilm_source(), tmp_path / "artifact", entry)
    embedder = load_embedder(artifact, max_batch=8)
    try:
        tokens = [embedder.tokenize(text) for text in SENTENCES[:12]]  # lengths 8 to 17: padding in every batch
        together = embedder.embed(tokens)
        alone = np.concatenate([embedder.embed([one]) for one in tokens])
    finally:
        embedder.close()
    assert len({len(t) for t in tokens}) > 4
    # llama.cpp sums in another order in a batch (f16 weights): equal to float rounding, not to the bit
    assert cosine_rows(together, alone).min() > 0.99999 and np.abs(together - alone).max() < 5e-4


def test_a_decoder_lm_embeds_by_its_last_token(tmp_path, tiny_model):
    """The tiny (random) Llama as an embedding model: MLX matches transformers' last hidden state exactly; the GGUF
    through llama.cpp matches on text without digits (its `llama-bpe` pre-tokenizer splits digits differently from
    the tiny model's GPT-2 one, which the `tokens` check reports)."""
    artifact, limits = embedding_artifact(tiny_model, tmp_path / "mlx-float32", {"mlx": {"dtype": "float32"}})
    checks = {c["name"]: c for c in validate_embedding(artifact, tiny_model, limits, Gates())}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["min_cosine"]["value"] >= 0.9999
    assert checks["paraphrase_accuracy"]["value"] == checks["paraphrase_accuracy"]["threshold"]  # the original's
    gguf, _ = embedding_artifact(tiny_model, tmp_path / "gguf-f16", {"gguf": {"type": "f16"}})
    texts = [text for text in SENTENCES if not any(ch.isdigit() for ch in text)]
    embedder = load_embedder(gguf)
    try:
        vectors = embedder.embed_texts(texts)
    finally:
        embedder.close()
    assert cosine_rows(vectors, reference_embeddings(tiny_model, limits, texts)).min() >= 0.99


def test_requested_shorter_dimensions_must_be_shorter(tiny_model):
    from tasks.embedding_settings import resolve_embedding
    from tasks.download import snapshot_local

    with pytest.raises(ValueError, match=r"embedding.dimensions \[64\]: shorter vectors must be shorter"):
        resolve_embedding.fn(snapshot_local(tiny_model), Embedding(dimensions=[32, 64]))
    assert resolve_embedding.fn(snapshot_local(tiny_model), Embedding(dimensions=[32]))["dimensions"] == 64


def test_the_mlx_encoder_artifact_holds_the_source_tensors_in_its_dtype(tmp_path):
    artifact, _ = embedding_artifact(minilm_source(), tmp_path / "mlx-float16", {"mlx": {"dtype": "float16"}})
    weights = load_file(artifact / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {np.dtype(np.float16)}
    assert not any(name.startswith("pooler.") for name in weights)  # the pretraining head is not needed
    assert json.loads((artifact / "embedding.json").read_text())["pooling"] == "mean"
    assert Path(artifact / "tokenizer.json").is_file()
