"""GGUF export and validation: llama.cpp's layout and tokenizer metadata, checked by reading the file back."""
from __future__ import annotations

import json
import re
import shutil
import sysconfig
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from formats.gguf.check import llamacpp_checks, validate_gguf
from formats.gguf.export import GgufExportError, export_gguf, permute_for_gguf, unpermute_from_gguf
from formats.gguf.importer import import_gguf
from tasks.validate import failures
from tests.fixtures.tiny_model import make_tiny_model

# With the tiny model's head_dim 16 and rope_theta 1e4 the rotary wavelengths are 6.3, 19.9, 62.8, 199, ...: with an
# original context of 64, Llama 3 keeps the first frequency, blends the next two and divides the other five by 8.
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
LINEAR = {"type": "linear", "factor": 4.0}  # the older key, which mlx-lm and transformers still read


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
    assert set(verdicts) == {"reads", "architecture", "vocabulary", "tensor_shapes", "rope_scaling",
                             "argmax_agreement", "logit_error", "llama_cpp_argmax_agreement", "llama_cpp_logit_error"}
    assert verdicts["rope_scaling"]["value"] == "none"
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
    # the failure says the measured error and the threshold it missed, not only the check's name
    [error] = failures([{"format": "gguf-f16", "checks": [checks["logit_error"]]}])
    assert re.fullmatch(r"gguf-f16: logit_error [\d.e+-]+ > max 0\.01 \(F16; relative to the largest logit\)", error)


def test_unsupported_architectures_and_types_are_refused(tmp_path, tiny_model):
    with pytest.raises(GgufExportError, match="iq2_xs"):
        export_gguf(tiny_model, tmp_path / "x.gguf", "iq2_xs")
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
    with pytest.raises(GgufExportError, match="gpt_neox"):
        export_gguf(other, tmp_path / "y.gguf", "f16")


def with_rope_scaling(source: Path, out: Path, scaling: dict | None) -> Path:
    """A copy of `source` with `scaling` as its config's rope_scaling and its q/k projections 4x larger: with the
    fixture's 0.02-scale weights attention is almost uniform, so no rotary frequency would show in the logits."""
    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}, indent=2))
    weights = load_file(str(out / "model.safetensors"))
    save_file({name: w * 4 if name.endswith(("q_proj.weight", "k_proj.weight")) else w for name, w in weights.items()},
              str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def long_prompt_checks(path: Path, source: Path) -> dict[str, dict]:
    """llama.cpp's logits on a 400-token prompt (well past the original context of 64) against mlx-lm's, which
    implements both scalings, through validation's own comparison."""
    import mlx.core as mx
    from mlx_lm import load

    model, tokenizer = load(str(source))
    model.set_dtype(mx.float32)
    tokens = tokenizer.encode(Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_text()[:4000])[:400]
    assert len(tokens) == 400
    reference = np.array(model(mx.array(tokens)[None])[0].astype(mx.float32))
    return {c["name"]: c for c in llamacpp_checks(path, source, [reference], [tokens], "F16")}


@pytest.fixture(scope="module")
def scaled_models(tmp_path_factory, tiny_model):
    """The tiny llama with llama3 scaling, with linear scaling, and without (the same weights), each exported f16."""
    root = tmp_path_factory.mktemp("rope-scaling")
    models = {}
    for name, scaling in (("llama3", LLAMA3), ("linear", LINEAR), ("unscaled", None)):
        source = with_rope_scaling(tiny_model, root / name, scaling)
        (root / f"gguf-{name}").mkdir()
        models[name] = (source, export_gguf(source, root / f"gguf-{name}" / "model-f16.gguf", "f16"))
    return models


def test_llama3_rope_scaling_is_written_as_llama_cpp_rope_freqs(scaled_models):
    source, path = scaled_models["llama3"]
    reader = gguf.GGUFReader(str(path))
    freqs = np.array(next(t for t in reader.tensors if t.name == "rope_freqs.weight").data)
    # llama.cpp rotates by angle / rope_freqs[i]: 1 where Llama 3 keeps a frequency, 8 where it divides it by 8
    assert freqs.dtype == np.float32 and freqs.shape == (8,)
    assert freqs[0] == 1 and 1 < freqs[1] < freqs[2] < 8 and np.all(freqs[3:] == 8)
    assert "llama.rope.scaling.type" not in reader.fields and "llama.rope.scaling.factor" not in reader.fields

    checks = {c["name"]: c for c in validate_gguf(path.parent, source)[0]}
    assert all(c["passed"] for c in checks.values()), checks
    assert checks["rope_scaling"]["value"] == "llama3"
    assert checks["llama_cpp_logit_error"]["value"] < 0.01  # the probes, a dozen tokens

    far = long_prompt_checks(path, source)
    assert far["llama_cpp_logit_error"]["passed"] and far["llama_cpp_argmax_agreement"]["passed"], far


def test_without_rope_freqs_llama_cpp_disagrees_and_validation_fails(scaled_models):
    """What the export wrote before it read rope_scaling: the same file without rope_freqs.weight."""
    source, _ = scaled_models["llama3"]
    _, unscaled = scaled_models["unscaled"]
    checks = {c["name"]: c for c in validate_gguf(unscaled.parent, source)[0]}
    assert not checks["rope_scaling"]["passed"] and "no rope_freqs.weight" in checks["rope_scaling"]["detail"]
    far = long_prompt_checks(unscaled, source)
    assert far["llama_cpp_logit_error"]["value"] > 0.05 and not far["llama_cpp_argmax_agreement"]["passed"], far


def test_linear_rope_scaling_is_written_as_metadata(scaled_models):
    source, path = scaled_models["linear"]
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["llama.rope.scaling.type"].contents() == "linear"
    assert reader.fields["llama.rope.scaling.factor"].contents() == 4.0
    assert "rope_freqs.weight" not in {t.name for t in reader.tensors}
    checks = validate_gguf(path.parent, source)[0]
    assert all(c["passed"] for c in checks), checks
    assert long_prompt_checks(path, source)["llama_cpp_logit_error"]["passed"]
    _, unscaled = scaled_models["unscaled"]
    assert not long_prompt_checks(unscaled, source)["llama_cpp_logit_error"]["passed"]


@pytest.mark.parametrize("kind", ["llama3", "linear"])
def test_importing_the_gguf_keeps_its_rope_scaling(tmp_path, scaled_models, kind):
    _, path = scaled_models[kind]
    config = json.loads((import_gguf(path, tmp_path / "imported") / "config.json").read_text())
    assert config["rope_scaling"] == (LLAMA3 if kind == "llama3" else {"rope_type": "linear", "factor": 4.0})
    unscaled = json.loads((import_gguf(scaled_models["unscaled"][1], tmp_path / "plain") / "config.json").read_text())
    assert "rope_scaling" not in unscaled


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
                                     {"type": "dynamic", "factor": 2.0},
                                     {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}])
def test_unsupported_rope_scaling_is_refused_by_name(tmp_path, tiny_model, scaling):
    source = with_rope_scaling(tiny_model, tmp_path / "model", scaling)
    kind = scaling.get("rope_type", scaling.get("type"))
    for qtype in ("f16", "q4_k_m"):
        with pytest.raises(GgufExportError, match=f"rope_scaling type '{kind}' is not supported by the GGUF export"):
            export_gguf(source, tmp_path / f"model-{qtype}.gguf", qtype)
    assert not list(tmp_path.glob("*.gguf"))


def test_llama3_scaling_of_a_qwen2_model_is_refused(tmp_path, qwen2):
    source = with_rope_scaling(qwen2, tmp_path / "model", LLAMA3)
    with pytest.raises(GgufExportError, match="llama3 rope_scaling .* only for llama models"):
        export_gguf(source, tmp_path / "model.gguf", "f16")
