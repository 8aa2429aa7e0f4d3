"""Capabilities read from an artifact's files without loading it: the GGUF header reader against the `gguf` package
on a real model file, FIM tokens found in each family's spelling, native or fallback tool templates, and files that
cannot be read answering plain capabilities rather than failing /v1/models."""
from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest

from formats.gguf.metadata import GgufFormatError, read_metadata
from serving.inference.local.capabilities import CHAT, artifact_traits, chat_capabilities
from serving.inference.local.fim import FimTokens, find_fim
from tests.fixtures.smollm2 import SMOLLM2

QWEN_TOOLS_TEMPLATE = "{%- if tools %}<tools>{{ tools | tojson }}</tools>{%- endif %}{{ messages[0]['content'] }}"
KEYS = {"tokenizer.chat_template", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.eos_token_id"}


def test_the_header_reader_agrees_with_the_gguf_package_on_smollm2():
    ours = read_metadata(SMOLLM2, KEYS)
    reference = gguf.GGUFReader(SMOLLM2).fields
    assert ours["tokenizer.ggml.tokens"] == reference["tokenizer.ggml.tokens"].contents()
    assert list(ours["tokenizer.ggml.token_type"]) == reference["tokenizer.ggml.token_type"].contents()
    assert ours["tokenizer.chat_template"] == reference["tokenizer.chat_template"].contents()
    assert ours["tokenizer.ggml.eos_token_id"] == reference["tokenizer.ggml.eos_token_id"].contents() == 2


def test_smollm2_has_no_fim_tokens_and_its_template_no_tools():
    """SmolLM2's vocabulary holds <file_sep>, <repo_name> and the Jupyter markers, but no FIM markers."""
    traits = artifact_traits(str(SMOLLM2.parent), "gguf")
    assert {"<|endoftext|>", "<|im_end|>", "<file_sep>"} <= set(traits.control_tokens)
    assert chat_capabilities(SMOLLM2.parent, "gguf") == (CHAT, "fallback")


def write_gguf(path: Path, tokens: list[str], control: set[str], template: str | None) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if t in control else gguf.TokenType.NORMAL for t in tokens])
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_with_qwen_coder_fim_tokens_and_a_tools_template(tmp_path):
    markers = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|file_sep|>"]
    write_gguf(tmp_path / "model.gguf", ["a", "b", *markers, "<|fim_pad|>"], set(markers), QWEN_TOOLS_TEMPLATE)
    assert chat_capabilities(tmp_path, "gguf") == ([*CHAT, "fim"], "native")
    # the same text as an ordinary token is not a marker: only control tokens count
    other = tmp_path / "plain"
    other.mkdir()
    write_gguf(other / "model.gguf", ["a", *markers], set(), None)
    assert chat_capabilities(other, "gguf") == (CHAT, "fallback")


def test_an_mlx_folder_with_starcoder_fim_tokens(tmp_path):
    tokens = {"0": "<|endoftext|>", "1": "<fim_prefix>", "2": "<fim_middle>", "3": "<fim_suffix>", "4": "<fim_pad>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {
        token: {"content": text, "special": True} for token, text in tokens.items()}}))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert chat_capabilities(tmp_path, "mlx") == ([*CHAT, "fim"], "fallback")
    assert find_fim({text: int(token) for token, text in tokens.items()}) == FimTokens(1, 3, 2, (0, 1, 2, 3, 4))


@pytest.mark.parametrize("markers, ends, expected", [
    (["<fim_prefix>", "<fim_suffix>", "<fim_middle>"], ["<|endoftext|>", "<file_sep>"], "starcoder"),
    (["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"], ["<|file_separator|>"], "qwen/codegemma"),
    (["▁<PRE>", "▁<SUF>", "▁<MID>"], ["▁<EOT>"], "codellama"),
    (["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"], ["<｜end▁of▁sentence｜>"], "deepseek"),
])
def test_each_familys_spelling_is_found_with_its_end_tokens(markers, ends, expected):
    vocabulary = {text: 100 + index for index, text in enumerate(markers + ends)}
    fim = find_fim(vocabulary)
    assert (fim.prefix, fim.suffix, fim.middle) == (100, 101, 102), expected
    assert set(fim.stops) == set(vocabulary.values())
    assert find_fim({text: token for text, token in vocabulary.items() if text != markers[2]}) is None


def test_unreadable_artifacts_answer_plain_capabilities(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 12)  # a header cut short
    with pytest.raises(GgufFormatError):
        read_metadata(tmp_path / "model.gguf", KEYS)
    assert chat_capabilities(tmp_path, "gguf") == (CHAT, "fallback")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    assert chat_capabilities(tmp_path, "mlx") == (CHAT, "fallback")
    assert chat_capabilities(None, None) == (CHAT, "fallback")


def test_a_providers_models_carry_what_the_upstream_says_and_this_server_relays():
    from serving.inference.providers import upstream_capabilities

    # tools and response_format are refused for providers' models; unknown words are dropped
    assert upstream_capabilities([*CHAT, "fim", "vision"], "chat") == ["chat", "completions", "fim"]
    assert upstream_capabilities(None, "chat") == ["chat", "completions"]  # an upstream that does not say
    assert upstream_capabilities("fim", "chat") == ["chat", "completions"]
    assert upstream_capabilities(["embeddings", "rerank"], "embedding") == []  # not relayed either
