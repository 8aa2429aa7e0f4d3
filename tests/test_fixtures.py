"""The test fixtures themselves: the tiny model is repeatable and loadable; the local hub serves real downloads."""
import hashlib
import os

import pytest
from huggingface_hub import snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError

from tests.fixtures.tiny_model import make_tiny_model


def test_tiny_model_is_byte_for_byte_repeatable(tmp_path, tiny_model):
    again = make_tiny_model(tmp_path / "again")
    names = sorted(p.name for p in tiny_model.iterdir())
    assert names == ["chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"]
    for name in names:
        assert (again / name).read_bytes() == (tiny_model / name).read_bytes(), name
    assert (make_tiny_model(tmp_path / "seed1", seed=1) / "model.safetensors").read_bytes() != \
        (tiny_model / "model.safetensors").read_bytes()


def test_tiny_model_loads_in_mlx_lm_and_transformers(tiny_model):
    from mlx_lm import generate, load
    from transformers import AutoTokenizer

    model, tokenizer = load(str(tiny_model))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    text = generate(model, tokenizer, prompt, max_tokens=5)
    assert isinstance(text, str) and len(text) > 0
    hf = AutoTokenizer.from_pretrained(str(tiny_model))
    rendered = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert hf.decode(hf.encode("def main():\n    return 42")) == "def main():\n    return 42"


def test_local_hub_serves_snapshot_download(tmp_path, local_hub, tiny_model):
    commit = local_hub.repos["tiny/llama"].commit
    path = snapshot_download("tiny/llama", revision="main", cache_dir=tmp_path, endpoint=local_hub.url)
    assert commit in path
    for name in os.listdir(tiny_model):
        assert (tmp_path / path / name).read_bytes() == (tiny_model / name).read_bytes()
    only_json = snapshot_download("tiny/llama", revision=commit, cache_dir=tmp_path / "b",
                                  allow_patterns=["*.json"], endpoint=local_hub.url)
    assert sorted(os.listdir(only_json)) == ["config.json", "tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("tiny/nope", cache_dir=tmp_path / "c", endpoint=local_hub.url)


def test_local_hub_can_serve_a_corrupted_file_that_the_client_accepts(tmp_path, tiny_model):
    """Why tasks/download.py verifies sha256 itself: the hub client does not notice a flipped byte."""
    from tests.fixtures.local_hub import LocalHub

    with LocalHub() as hub:
        hub.add_repo("tiny/llama", tiny_model)
        hub.corrupt("tiny/llama", "model.safetensors")
        path = snapshot_download("tiny/llama", cache_dir=tmp_path, endpoint=hub.url)
    served = (tmp_path / path / "model.safetensors").read_bytes()
    original = (tiny_model / "model.safetensors").read_bytes()
    assert len(served) == len(original) and served != original
    assert hashlib.sha256(served).hexdigest() != hashlib.sha256(original).hexdigest()
