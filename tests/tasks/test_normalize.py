"""The normalise step detects what a source is; GGUF and quantized MLX sources become plain safetensors folders."""
from __future__ import annotations

import shutil

import pytest
from mlx_lm import convert, load, stream_generate

from formats.gguf.export import export_gguf
from tasks.download import snapshot_local
from tasks.normalize import UnsupportedSource, normalise_checkpoint, source_kind

pytestmark = pytest.mark.usefixtures("prefect_server")


def greedy(path, n=8):
    model, tokenizer = load(str(path))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                           tokenize=False)
    return [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=n)]


def test_kinds_are_detected(tmp_path, tiny_model):
    assert source_kind(snapshot_local(tiny_model)) == "hf"
    gguf = export_gguf(tiny_model, tmp_path / "m.gguf", "f16")
    assert source_kind(snapshot_local(gguf)) == "gguf"
    quantized = tmp_path / "q"
    convert(hf_path=str(tiny_model), mlx_path=str(quantized), quantize=True, q_bits=4, q_group_size=32)
    assert source_kind(snapshot_local(quantized)) == "mlx-q"


def test_a_gguf_source_becomes_the_same_model(tmp_path, tiny_model):
    gguf = export_gguf(tiny_model, tmp_path / "m.gguf", "f16")
    normalised = normalise_checkpoint(snapshot_local(gguf), str(tmp_path / "runs"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(normalised.files)
    assert greedy(normalised.path) == greedy(tiny_model)
    assert normalised.revision == snapshot_local(gguf).revision  # lineage names the file that was given


def test_a_quantized_mlx_source_is_dequantized(tmp_path, tiny_model):
    quantized = tmp_path / "q"
    convert(hf_path=str(tiny_model), mlx_path=str(quantized), quantize=True, q_bits=8, q_group_size=32)
    normalised = normalise_checkpoint(snapshot_local(quantized), str(tmp_path / "runs"))
    assert "quantization" not in (tmp_path / "runs").joinpath(normalised.path, "config.json").read_text()
    assert greedy(normalised.path) == greedy(quantized)


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes.txt").write_text("hello") and d / "notes.txt", "notes.txt: not a model file"),
    (lambda d: (d / "broken.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage") and d / "broken.gguf",
     "broken.gguf is not a readable GGUF file"),
    (lambda d: (d / "weights.safetensors").write_bytes(b"{}") and d, "has no config.json"),
])
def test_anything_else_is_refused_naming_the_path(tmp_path, make, message):
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(UnsupportedSource, match=message):
        normalise_checkpoint(snapshot_local(make(source)), str(tmp_path / "runs"))
    assert not (tmp_path / "runs" / "normalise").exists() or not any(
        p for p in (tmp_path / "runs" / "normalise").iterdir() if not p.name.endswith(".tmp"))


def test_a_folder_with_two_ggufs_is_ambiguous(tmp_path, tiny_model):
    export_gguf(tiny_model, tmp_path / "a.gguf", "f16")
    shutil.copy(tmp_path / "a.gguf", tmp_path / "b.gguf")
    with pytest.raises(UnsupportedSource, match="several .gguf files"):
        source_kind(snapshot_local(tmp_path))
