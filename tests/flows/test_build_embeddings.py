"""Embedding specs through the real build flow (a real Prefect server): all-MiniLM-L6-v2 from its wheel's zip into
GGUF and MLX, each artifact validated against the original model, published with `task: embedding`; the tiny
decoder LM as an embedding model (last-token pooling); a failed gate publishes nothing."""
from __future__ import annotations

import pytest

from factory.registry import Registry
from factory.settings import Settings
from flows.build import build_model
from tests.fixtures.minilm import PACKAGE, PATH
from tests.flows.helpers import write_spec

pytestmark = pytest.mark.usefixtures("prefect_server")


def registry() -> Registry:
    return Registry(Settings.from_env().registry)


def test_all_minilm_is_built_validated_and_published_as_an_embedding_model(tmp_path, factory_root):
    spec = write_spec(tmp_path / "specs", {
        "name": "minilm", "task": "embedding", "source": {"package": PACKAGE, "path": PATH},
        "formats": [{"gguf": {"type": "q8_0"}}, {"mlx": {"dtype": "float32"}}],
        "embedding": {"dimensions": [128]},
        "validate": {"gates": {"min_paraphrase_accuracy": 1.0, "min_sentences_per_second": 1}}})
    state = build_model(spec=str(spec), return_state=True)
    assert state.is_completed(), state.message
    [version] = registry().list()
    manifest = version.manifest()
    assert version.formats == ["gguf-q8_0", "mlx-float32"] and manifest["task"] == "embedding"
    assert manifest["embedding"] == {"architecture": "encoder", "model_type": "bert", "pooling": "mean",
                                     "normalize": True, "dimensions": 384, "max_tokens": 256,
                                     "allowed_dimensions": [384, 128], "max_inputs": 2048}
    for report in manifest["report"]["formats"]:
        checks = {c["name"]: c for c in report["checks"]}
        assert report["passed"] and checks["min_cosine"]["value"] >= 0.999
        assert checks["paraphrase_accuracy"]["value"] == 1.0 and checks["tokens"]["value"] == "20/20"
    assert (version.artifact("mlx-float32") / "embedding.json").is_file()
    again = build_model(spec=str(spec))  # content-cached: nothing new
    assert again["status"] == "up to date" and len(registry().list()) == 1


def test_a_decoder_lm_builds_as_an_embedding_model_and_a_failed_gate_publishes_nothing(tmp_path, factory_root,
                                                                                         tiny_model):
    body = {"name": "tiny-embed", "task": "embedding", "source": {"local": str(tiny_model)},
            "formats": [{"mlx": {"dtype": "float32"}}]}
    state = build_model(spec=str(write_spec(tmp_path / "specs", body)), return_state=True)
    assert state.is_completed(), state.message
    manifest = registry().resolve("tiny-embed").manifest()
    assert manifest["embedding"]["pooling"] == "last" and manifest["embedding"]["architecture"] == "decoder"
    strict = {**body, "name": "tiny-strict", "validate": {"gates": {"min_sentences_per_second": 1e9}}}
    failed = build_model(spec=str(write_spec(tmp_path / "strict", strict)), return_state=True)
    assert failed.is_failed()
    assert "mlx-float32: sentences_per_second" in str(failed.result(raise_on_failure=False))
    assert [v.name for v in registry().list()] == ["tiny-embed"]
