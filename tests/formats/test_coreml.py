"""Core ML export and validation: the torch decoder against mlx-lm, the saved program evaluated by coremltools'
own value inference, spec inspection, and checks that fail when the package is damaged or does not fit the source."""
from __future__ import annotations

import json
import re
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from factory.spec import CoremlFormat
from formats.coreml.check import numeric_checks, validate_coreml
from formats.coreml.export import PACKAGE, export_coreml
from formats.coreml.model import UnsupportedArchitecture, causal_mask, load_causal_lm
from formats.coreml.runtime import CoremlLanguageModel
from tasks.validate import failures
from tests.fixtures.tiny_model import make_tiny_model

CONTEXT = 128
TEXT = "def main():\n    return 42\n"


@pytest.fixture(scope="module")
def tied_qwen2(tmp_path_factory):
    """A Qwen2 (q/k/v biases) whose output head is the embedding, as Qwen2.5-0.5B's is."""
    model = make_tiny_model(tmp_path_factory.mktemp("qwen2") / "model", architecture="qwen2", seed=3)
    config = json.loads((model / "config.json").read_text()) | {"tie_word_embeddings": True}
    (model / "config.json").write_text(json.dumps(config))
    weights = load_file(model / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory, tiny_model):
    """Each precision/compression of the tiny llama, exported once for the module."""
    root = tmp_path_factory.mktemp("coreml")
    made = {}
    for precision, compress in [("float16", "none"), ("float32", "none"), ("float16", "int8"),
                                ("float16", "palettize4")]:
        options = CoremlFormat(precision=precision, compress=compress, context_length=CONTEXT)
        export_coreml(tiny_model, root / options.key, options)
        made[options.key] = root / options.key
    return made


def mlx_logits(source, tokens):
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(source))
    model.set_dtype(mx.float32)
    return np.array(model(mx.array(tokens)[None])[0].astype(mx.float32))


def tokens_of(source, text=TEXT):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source).encode(text)


@pytest.mark.parametrize("architecture", ["llama", "qwen2"])
def test_the_torch_decoder_matches_mlx_lm_and_its_cache_matches_a_full_pass(tmp_path, architecture):
    source = make_tiny_model(tmp_path / "model", architecture=architecture)
    tokens = tokens_of(source)
    model = load_causal_lm(source, CONTEXT)
    ids = torch.tensor([tokens], dtype=torch.int32)
    with torch.no_grad():
        full = model(ids, causal_mask(0, len(tokens)))[0].numpy()
        model.key_cache.zero_(), model.value_cache.zero_()
        split = len(tokens) // 2
        first = model(ids[:, :split], causal_mask(0, split))[0].numpy()
        rest = model(ids[:, split:], causal_mask(split, len(tokens) - split))[0].numpy()
    reference = mlx_logits(source, tokens)
    # float16 KV cache: ~1e-4 of logits of size ~0.6
    assert np.abs(full - reference).max() < 2e-3 * np.abs(reference).max()
    assert np.abs(np.concatenate([first, rest]) - full).max() < 1e-4  # float32: only summation order differs


def test_every_precision_and_compression_passes_validation(exports, tiny_model):
    sizes = {}
    for key, directory in exports.items():
        checks, model = validate_coreml(directory, tiny_model)
        assert all(c["passed"] for c in checks), (key, checks)
        assert [c["name"] for c in checks] == ["reads", "interface", "flexible_length", "kv_states",
                                               "deployment_target", "linear_ops", "weight_bytes",
                                               "argmax_agreement", "logit_error", "predict"]
        verdicts = {c["name"]: c for c in checks}
        assert verdicts["kv_states"]["value"] == f"2x1x2x{CONTEXT}x16"
        sizes[key] = verdicts["weight_bytes"]["value"]
        assert model.has_chat_template() and (directory / "tokenizer.json").is_file()
    # compression really shrinks the weights
    assert sizes["coreml-float32"] > sizes["coreml-float16"] > sizes["coreml-float16-int8"] \
        > sizes["coreml-float16-palettize4"]


def test_the_saved_program_decodes_token_by_token_like_the_source(exports, tiny_model):
    """Feeding one token per call exercises the KV cache state at every position."""
    tokens = tokens_of(tiny_model)
    model = CoremlLanguageModel.load(exports["coreml-float32"])
    model.program.reset()
    stepped = np.concatenate([model.step([token], past) for past, token in enumerate(tokens)])
    reference = mlx_logits(tiny_model, tokens)
    assert (stepped.argmax(-1) == reference.argmax(-1)).all()
    assert np.abs(stepped - reference).max() < 2e-3 * np.abs(reference).max()


def test_a_tied_qwen2_stores_its_embedding_once_and_validates(tmp_path, tied_qwen2):
    options = CoremlFormat(compress="int8", context_length=CONTEXT)
    export_coreml(tied_qwen2, tmp_path / "out", options)
    checks, _ = validate_coreml(tmp_path / "out", tied_qwen2)
    assert all(c["passed"] for c in checks), checks  # weight_bytes counts the embedding once


# Trained models carry residual activations in the hundreds or thousands (SmolLM2-135M: up to 24926), which float16
# holds (max 65504) but whose squares it does not: RMSNorm's mean of squares overflowed, and every float16 export of
# SmolLM2 answered <|endoftext|>. Scaling the residual stream by a power of two (the embedding and the projections
# that write into it) leaves every norm's output as it was (but for eps), so the loud model is still a sound model.
LOUD = 2.0 ** 15


@pytest.fixture(scope="module")
def loud_llama(tmp_path_factory):
    """The tiny llama with a residual stream 2**15 times louder: every token's mean square is past float16's max."""
    model = make_tiny_model(tmp_path_factory.mktemp("loud") / "model", seed=5)
    weights = load_file(model / "model.safetensors")
    for name in weights:
        if name == "model.embed_tokens.weight" or name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = weights[name] * np.float32(LOUD)
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    return model


@pytest.mark.parametrize("compress", ["none", "int8"])
def test_float16_exports_survive_activations_whose_squares_overflow_float16(tmp_path, loud_llama, compress):
    embedding = load_file(loud_llama / "model.safetensors")["model.embed_tokens.weight"]
    assert np.sqrt(np.mean(embedding.astype(np.float64) ** 2, axis=-1)).min() > 256  # mean square > 65504
    assert np.abs(embedding).max() < 65504 / 8  # ... while the values themselves fit float16 with room
    options = CoremlFormat(precision="float16", compress=compress, context_length=CONTEXT)
    export_coreml(loud_llama, tmp_path / "out", options)
    checks, _ = validate_coreml(tmp_path / "out", loud_llama)
    assert failures([{"format": options.key, "checks": checks}]) == []


def test_a_damaged_package_fails_to_read(exports, tmp_path, tiny_model):
    directory = shutil.copytree(exports["coreml-float16"], tmp_path / "damaged")
    (directory / PACKAGE / "Manifest.json").unlink()
    checks, model = validate_coreml(directory, tiny_model)
    assert [c["name"] for c in checks] == ["reads"] and not checks[0]["passed"] and model is None


def test_corrupted_weights_fail_the_numeric_comparison(exports, tmp_path, tiny_model):
    directory = shutil.copytree(exports["coreml-float16"], tmp_path / "corrupted")
    weights = directory / PACKAGE / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    original = weights.read_bytes()
    data = bytearray(len(original))  # zero every weight in the second half of the file ...
    data[: len(data) // 2] = original[: len(data) // 2]
    start = original.find(b"\xef\xbe\xad\xde")  # ... but keep each blob's 64-byte header (sentinel 0xDEADBEEF)
    while start != -1:
        data[start:start + 64] = original[start:start + 64]
        start = original.find(b"\xef\xbe\xad\xde", start + 64)
    weights.write_bytes(bytes(data))
    verdicts = {c["name"]: c for c in validate_coreml(directory, tiny_model)[0]}
    assert verdicts["weight_bytes"]["passed"]  # same size: only the numbers can tell
    assert not verdicts["argmax_agreement"]["passed"] or not verdicts["logit_error"]["passed"]


def test_a_failed_numeric_check_says_the_measured_value_and_the_threshold(tiny_model):
    """A program whose logits are all zero misses both gates; the failure says by how much."""
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    flat = SimpleNamespace(context=CONTEXT, logits=lambda tokens, split: np.zeros((len(tokens), vocab), np.float32))
    checks = numeric_checks(flat, tiny_model, "float16")
    assert [(c["name"], c["bound"], c["threshold"]) for c in checks] == [("argmax_agreement", "min", 0.98),
                                                                          ("logit_error", "max", 0.02)]
    argmax, error = failures([{"format": "coreml-float16", "checks": checks}])
    assert re.fullmatch(r"coreml-float16: argmax_agreement [\d.]+ < min 0\.98 \(float16\)", argmax), argmax
    assert error == "coreml-float16: logit_error 1 > max 0.02 (float16; relative to the largest logit)"


def test_a_package_made_from_another_model_fails_the_spec_checks(exports, tmp_path):
    other = make_tiny_model(tmp_path / "deeper", layers=3)
    verdicts = {c["name"]: c for c in validate_coreml(exports["coreml-float16"], other)[0]}
    assert not verdicts["kv_states"]["passed"] and not verdicts["linear_ops"]["passed"]
    assert not verdicts["weight_bytes"]["passed"]


def test_an_architecture_without_a_core_ml_decoder_is_refused_by_name(tmp_path, tiny_model):
    source = shutil.copytree(tiny_model, tmp_path / "gemma")
    config = json.loads((source / "config.json").read_text()) | {"model_type": "gemma"}
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="supports llama, qwen2, not model_type 'gemma'"):
        export_coreml(source, tmp_path / "out", CoremlFormat())
