"""GGUF export and validation: llama.cpp's layout and tokenizer metadata, checked by reading the file back."""
from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest

from formats.gguf.check import validate_gguf
from formats.gguf.export import GgufExportError, export_gguf, permute_for_gguf, unpermute_from_gguf
from tests.fixtures.tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("qwen2") / "model", architecture="qwen2")


def exported(tmp_path, source, qtype):
    directory = tmp_path / f"gguf-{qtype}"
    directory.mkdir()
    export_gguf(source, directory / f"model-{qtype}.gguf", qtype)
    return directory


def test_the_llama_rope_permutation_round_trips():
    weight = np.arange(8 * 3 * 4, dtype=np.float32).reshape(8 * 3, 4)
    assert not np.array_equal(permute_for_gguf(weight, 3), weight)
    assert np.array_equal(unpermute_from_gguf(permute_for_gguf(weight, 3), 3), weight)


@pytest.mark.parametrize("qtype", ["f16", "q8_0", "q4_0", "q4_k_m"])
def test_llama_exports_validate_structurally_and_numerically(tmp_path, tiny_model, qtype):
    checks, model = validate_gguf(exported(tmp_path, tiny_model, qtype), tiny_model)
    verdicts = {c["name"]: c for c in checks}
    assert all(c["passed"] for c in checks), checks
    assert set(verdicts) == {"reads", "architecture", "vocabulary", "tensor_shapes", "argmax_agreement",
                             "logit_error", "llama_cpp_argmax_agreement", "llama_cpp_logit_error"}
    assert model is not None


def test_qwen2_with_biases_exports_and_validates(tmp_path, qwen2):
    checks, _ = validate_gguf(exported(tmp_path, qwen2, "q8_0"), qwen2)
    assert all(c["passed"] for c in checks), checks


def test_byte_level_bpe_metadata_is_written_for_llama_cpp(tmp_path, tiny_model):
    reader = gguf.GGUFReader(str(exported(tmp_path, tiny_model, "f16") / "model-f16.gguf"))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    tokenizer = json.loads((tiny_model / "tokenizer.json").read_text())
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "llama-bpe"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == 1024 and tokens[tokenizer["model"]["vocab"]["def"]] == "def"
    assert len(field("tokenizer.ggml.merges")) == len(tokenizer["model"]["merges"])
    assert tokens[field("tokenizer.ggml.eos_token_id")] == "<|im_end|>"
    assert field("tokenizer.ggml.token_type")[tokens.index("<|im_start|>")] == gguf.TokenType.CONTROL
    assert "<|im_start|>" in field("tokenizer.chat_template")
    assert field("llama.block_count") == 2 and field("llama.context_length") == 2048


def test_a_truncated_file_fails_to_read(tmp_path, tiny_model):
    directory = exported(tmp_path, tiny_model, "q8_0")
    path = directory / "model-q8_0.gguf"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    checks, model = validate_gguf(directory, tiny_model)
    assert [c["name"] for c in checks] == ["reads"] and not checks[0]["passed"] and model is None


def test_corrupted_weights_fail_the_numeric_comparison(tmp_path, tiny_model):
    directory = exported(tmp_path, tiny_model, "f16")
    path = directory / "model-f16.gguf"
    reader = gguf.GGUFReader(str(path))
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    data = bytearray(path.read_bytes())
    start = int(embedding.data_offset)
    data[start:start + 4096] = bytes(4096)  # zero the first embedding rows
    path.write_bytes(bytes(data))
    checks = {c["name"]: c for c in validate_gguf(directory, tiny_model)[0]}
    assert checks["tensor_shapes"]["passed"] and not checks["logit_error"]["passed"]


def test_unsupported_architectures_and_types_are_refused(tmp_path, tiny_model):
    with pytest.raises(GgufExportError, match="iq2_xs"):
        export_gguf(tiny_model, tmp_path / "x.gguf", "iq2_xs")
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(GgufExportError, match="gpt_neox"):
        export_gguf(other, tmp_path / "y.gguf", "f16")
