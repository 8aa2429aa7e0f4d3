"""Embedding validation: an artifact runs in its own runtime (llama.cpp or MLX) on a fixed set of sentences and is
compared with the original model (transformers on the source weights, computed at build time):

    tokens                 the runtime's token ids equal the source tokenizer's, sentence by sentence
    min_cosine             the lowest per-sentence cosine similarity to the original's vector, gated per type:
                           float formats >= 0.99; q8_0 >= 0.98 (all-MiniLM-L6-v2 measured 0.9995: 8-bit blocks
                           lose a little in every matrix, and deeper models lose more)
    paraphrase_accuracy    the share of comparisons in which a paraphrase pair is closer than the pair's sentences
                           are to any unrelated sentence; gated at the spec's min_paraphrase_accuracy, or else at
                           the original model's own share (a conversion must not lose what the model knew)
    sentences_per_second   the fixed sentences embedded in one call (batches of the runtime's size), after one
                           warm-up call; gated when the spec asks
A GGUF artifact's structure (architecture, vocabulary size, pooling type) is checked first.
"""
from __future__ import annotations

import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from factory.spec import Gates
from formats.checks import check, gate
from formats.embeddings.runtime import Embedder, load_embedder

MIN_COSINE = {"q8_0": 0.98}  # by GGUF type; every float format (f16, float16, bfloat16, float32): DEFAULT_MIN_COSINE
DEFAULT_MIN_COSINE = 0.99
PARAPHRASES = [
    ("A man is playing a guitar.", "Someone is strumming an acoustic guitar."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "What are the steps to change my login password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is cooking pasta for dinner.", "Spaghetti is being prepared for her evening meal."),
    ("The train to Paris was delayed by an hour.", "Our Paris-bound train left sixty minutes late."),
]
UNRELATED = [
    "Photosynthesis converts sunlight into chemical energy in plants.",
    "The quarterly tax return is due at the end of April.",
    "Volcanic eruptions can cool the global climate for years.",
    "He forgot his umbrella at the library on Tuesday.",
    "The recipe calls for two cups of flour and one egg.",
    "Quantum computers use qubits instead of classical bits.",
    "Héllo wörld: naïve café prices rose 12% in 2024!",
    "def main():\n    return 42",
]
SENTENCES = [text for pair in PARAPHRASES for text in pair] + UNRELATED


def validate_embedding(artifact: Path, source: Path, settings: dict[str, Any], gates: Gates,
                       gguf_type: str | None = None) -> list[dict[str, Any]]:
    results = gguf_structure(artifact, source, settings) if gguf_type else []
    if not all(r["passed"] for r in results):
        return results
    try:
        embedder = load_embedder(artifact)
    except Exception as exc:  # an artifact that does not load fails validation; it must not crash the build
        return results + [check("loads", False, detail=f"{type(exc).__name__}: {exc}")]
    try:
        return results + [check("loads", True, embedder.name)] + compare(embedder, source, settings, gates,
                                                                         gguf_type)
    finally:
        embedder.close()


def compare(embedder: Embedder, source: Path, settings: dict[str, Any], gates: Gates,
            gguf_type: str | None) -> list[dict[str, Any]]:
    from formats.embeddings.reference import reference_tokens

    expected_tokens = reference_tokens(source, SENTENCES, settings["max_tokens"])
    tokens = [embedder.tokenize(text) for text in SENTENCES]
    differing = [i for i, (a, b) in enumerate(zip(tokens, expected_tokens)) if a != b]
    results = [check("tokens", not differing, f"{len(SENTENCES) - len(differing)}/{len(SENTENCES)}",
                     f"differ from the source tokenizer's on {SENTENCES[differing[0]]!r}" if differing else "")]
    embedder.embed(tokens)  # warm-up: the first call of a batch size allocates
    started = time.perf_counter()
    vectors = embedder.embed(tokens)
    speed = len(tokens) / (time.perf_counter() - started)
    reference = source_vectors(source, json.dumps(settings, sort_keys=True))
    cosines = cosine_rows(vectors, reference)
    bound = MIN_COSINE.get(gguf_type, DEFAULT_MIN_COSINE)
    results.append(gate("min_cosine", round(float(cosines.min()), 6), "min", bound,
                        f"per sentence vs the original model; mean {cosines.mean():.5f} over {len(cosines)}"))
    accuracy, original = paraphrase_accuracy(vectors), paraphrase_accuracy(reference)
    wanted = gates.min_paraphrase_accuracy if gates.min_paraphrase_accuracy is not None else original
    results.append(gate("paraphrase_accuracy", round(accuracy, 4), "min", round(wanted, 4),
                        f"the original model: {original:.4f}"))
    results.append(gate("sentences_per_second", round(speed, 1), "min", gates.min_sentences_per_second,
                        f"{len(tokens)} sentences in one call on {embedder.name}, batches of {embedder.max_batch}"))
    return results


@lru_cache(maxsize=4)
def source_vectors(source: Path, settings_json: str) -> np.ndarray:
    """The original model's vectors of SENTENCES (computed once per build, shared by its artifacts)."""
    from formats.embeddings.reference import reference_embeddings

    return reference_embeddings(source, json.loads(settings_json), SENTENCES)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def paraphrase_accuracy(vectors: np.ndarray) -> float:
    """Vectors of SENTENCES: for every paraphrase pair (a, b) and every sentence u outside the pair, is a closer to
    b than to u, and b closer to a than to u? The share of comparisons that hold."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    similarity = unit @ unit.T
    wins = total = 0
    for pair in range(len(PARAPHRASES)):
        a, b = 2 * pair, 2 * pair + 1
        for other in range(len(SENTENCES)):
            if other in (a, b):
                continue
            wins += int(similarity[a, b] > similarity[a, other]) + int(similarity[a, b] > similarity[b, other])
            total += 2
    return wins / total


def gguf_structure(artifact: Path, source: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The file reads, is the source's architecture with its whole vocabulary, and pools as the settings say."""
    import gguf

    from formats.gguf.bert import POOLING
    from formats.gguf.files import gguf_file

    config = json.loads((source / "config.json").read_text())
    try:
        reader = gguf.GGUFReader(str(gguf_file(artifact)))
    except Exception as exc:  # a missing, truncated or corrupted file
        return [check("reads", False, detail=f"{type(exc).__name__}: {exc}")]
    field = lambda key: reader.fields[key].contents() if key in reader.fields else None  # noqa: E731
    arch = field("general.architecture")
    tokens = len(field("tokenizer.ggml.tokens") or [])
    results = [check("reads", True, f"{len(reader.tensors)} tensors"),
               check("architecture", arch == config["model_type"], arch, f"source is {config['model_type']}"),
               check("vocabulary", tokens == config["vocab_size"], tokens, f"config vocab_size {config['vocab_size']}")]
    if settings["architecture"] == "encoder":  # other llama.cpp clients read an encoder's pooling from the file
        pooling = field(f"{arch}.pooling_type")
        results.append(check("pooling", pooling == POOLING[settings["pooling"]], pooling,
                             f"{settings['pooling']} is {POOLING[settings['pooling']]}"))
    return results
