"""Fill-in-the-middle and capabilities through a real gunicorn server, with the official openai SDK as the client.

- A tiny code model (the tiny model with StarCoder's FIM tokens in its vocabulary) on both engines: /v1/models says
  `fim`; a completion with a suffix sends exactly [PRE] prefix [SUF] suffix [MID] (counted by the model's own
  Hugging Face tokenizer), whole and streamed; the middle ends at <file_sep> and <|endoftext|>.
- The tiny test model (ChatML tokens only) on both engines and the real SmolLM2-135M (whose vocabulary has
  <file_sep> and <repo_name> but no FIM markers) refuse a suffix with 400 fim_not_supported, and /v1/models does
  not list `fim` for them.
"""
from __future__ import annotations


import openai
import pytest

from serving.inference.local.capabilities import chat_capabilities
from tests.fixtures.tiny_model import make_tiny_model
from tests.serving.conftest import start_server, stop_server

FIM_TOKENS = ("<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<file_sep>")
PREFIX = "def area(width, height):\n    "
SUFFIX = "\n\nprint(area(3, 4))\n"
CHAT = ["chat", "completions", "tools", "structured_outputs"]


@pytest.fixture(scope="module", params=["llamacpp", "mlx"])
def coder(request, tmp_path_factory):
    """The tiny model with FIM tokens, served by each engine (a GGUF f16, an MLX float16); with its Hugging Face
    tokenizer."""
    from mlx_lm import convert
    from transformers import AutoTokenizer

    from formats.gguf.export import export_gguf

    base = tmp_path_factory.mktemp("coder")
    source = make_tiny_model(base / "hf", extra_special_tokens=FIM_TOKENS)
    if request.param == "llamacpp":
        artifact, key = base / "gguf-f16", "gguf-f16"
        artifact.mkdir()
        export_gguf(source, artifact / "model-f16.gguf", "f16")
    else:
        artifact, key = base / "mlx-float16", "mlx-float16"
        convert(hf_path=str(source), mlx_path=str(artifact), dtype="float16")
    running = start_server(base / "root", artifact, key)
    assert running.client.models.retrieve("tiny").model_extra["engine"] == request.param
    yield running, AutoTokenizer.from_pretrained(source)
    stop_server(running.process)


def test_a_code_model_lists_fim_and_fills_the_middle_whole_and_streamed(coder):
    server, tokenizer = coder
    model = server.client.models.retrieve("tiny")
    assert model.model_extra["capabilities"] == [*CHAT, "fim"]
    assert model.model_extra["tool_template"] == "fallback"  # the tiny template does not render tools

    expected_prompt = 3 + len(tokenizer.encode(PREFIX)) + len(tokenizer.encode(SUFFIX))
    whole = server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=6, temperature=0)
    assert whole.usage.prompt_tokens == expected_prompt
    assert whole.choices[0].finish_reason in ("stop", "length") and whole.usage.completion_tokens <= 6

    chunks = list(server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=6,
                                                   temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text  # greedy: the same
    assert chunks[-1].usage.prompt_tokens == expected_prompt


@pytest.mark.parametrize("end", ["<file_sep>", "<|endoftext|>"])
def test_the_middle_ends_at_the_end_tokens(coder, end):
    """The end token is forced with logit_bias: the middle ends there, as 'stop', before any text."""
    server, tokenizer = coder
    bias = {str(tokenizer.convert_tokens_to_ids(end)): 100}
    whole = server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=8, temperature=0,
                                             logit_bias=bias)
    assert (whole.choices[0].text, whole.choices[0].finish_reason, whole.usage.completion_tokens) == ("", "stop", 0)
    streamed = list(server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=8,
                                                     temperature=0, logit_bias=bias, stream=True))
    assert [c.choices[0].finish_reason for c in streamed if c.choices[0].finish_reason] == ["stop"]


def test_the_file_separator_ends_only_a_middle(coder):
    """Neither engine counts <file_sep> as an end of generation; a FIM request stops there, a plain one does not."""
    server, tokenizer = coder
    bias = {str(tokenizer.convert_tokens_to_ids("<file_sep>")): 100}
    plain = server.client.completions.create(model="tiny", prompt=PREFIX, max_tokens=3, temperature=0,
                                             logit_bias=bias)
    assert (plain.choices[0].finish_reason, plain.usage.completion_tokens) == ("length", 3)


def test_the_tiny_model_has_no_fim_tokens_on_either_engine(server):
    model = server.client.models.retrieve("tiny")
    assert model.model_extra["capabilities"] == CHAT and model.model_extra["tool_template"] == "fallback"
    with pytest.raises(openai.BadRequestError) as refused:
        server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=4)
    assert refused.value.code == "fim_not_supported" and refused.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError) as refused:
        server.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=4, stream=True)
    assert refused.value.code == "fim_not_supported"


def test_smollm2_refuses_a_suffix_and_still_completes_without_one(smollm2):
    model = smollm2.client.models.retrieve("tiny")
    assert model.model_extra["capabilities"] == CHAT and model.model_extra["engine"] == "llamacpp"
    with pytest.raises(openai.BadRequestError) as refused:
        smollm2.client.completions.create(model="tiny", prompt=PREFIX, suffix=SUFFIX, max_tokens=8)
    assert refused.value.code == "fim_not_supported"
    reply = smollm2.client.completions.create(model="tiny", prompt="def add(a, b):\n    return", suffix="",
                                              max_tokens=4, temperature=0)
    assert reply.choices[0].text and reply.usage.completion_tokens >= 1


def test_mlx_artifacts_are_read_from_their_tokenizer_files(tiny_mlx, tmp_path):
    """What mlx-lm's conversion writes: the template and the control tokens, FIM markers where the model has them."""
    from mlx_lm import convert

    from serving.inference.local.capabilities import artifact_traits

    traits = artifact_traits(str(tiny_mlx), "mlx")
    assert "<|im_start|>" in traits.template and {"<|endoftext|>", "<|im_end|>"} <= set(traits.control_tokens)
    assert chat_capabilities(tiny_mlx, "mlx") == (CHAT, "fallback")
    convert(hf_path=str(make_tiny_model(tmp_path / "hf", extra_special_tokens=FIM_TOKENS)),
            mlx_path=str(tmp_path / "mlx"), dtype="float16")
    assert chat_capabilities(tmp_path / "mlx", "mlx") == ([*CHAT, "fim"], "fallback")
