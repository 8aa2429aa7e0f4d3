"""finetune_model against a real Prefect server and registry, training the tiny model with mlx-lm."""
from __future__ import annotations

import pytest
from mlx_lm import generate, load

from factory.registry import Registry
from factory.settings import Settings
from flows.build import build_model
from flows.finetune import finetune_model
from tests.fixtures.memorise import MEMORISING, PAIRS, probes, write_training_file
from tests.flows.helpers import write_spec

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def base(factory_root, tmp_path, tiny_model):
    """The tiny model built into the registry as `tiny` (float16 and q4) by the real build flow."""
    spec = write_spec(tmp_path / "specs", {"name": "tiny", "source": {"local": str(tiny_model)},
                                           "formats": [{"mlx": {"dtype": "float16"}},
                                                       {"mlx": {"quantize": {"bits": 4, "group_size": 32}}}]})
    build_model(spec=str(spec))
    return Registry(Settings.from_env().registry)


def test_full_fine_tune_memorises_and_publishes_a_new_model_with_lineage(base, tmp_path):
    result = finetune_model(base="tiny", training_file=str(write_training_file(tmp_path)),
                            hyperparameters=MEMORISING, suffix="zorbia", probes=probes(), min_valid_loss_drop=0.5)
    assert result["version"] == "tiny-ft-zorbia@1"
    assert (result["exact_match_before"], result["exact_match_after"]) == (0, 4)
    version = base.resolve("tiny-ft-zorbia")
    assert version.formats == ["mlx-float16", "mlx-q4-g32", "training"]  # the base's MLX formats, plus the run
    lineage = version.manifest()["lineage"]
    assert lineage["base"] == "tiny@1" and lineage["method"] == "full" and lineage["trained_tokens"] > 0
    assert lineage["valid_loss_after"] < lineage["valid_loss_before"] / 2
    training = version.artifact("training")
    assert (training / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, tokenizer = load(str(version.artifact("mlx-float16")))
    question, answer = PAIRS[0]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           tokenize=False)
    assert generate(model, tokenizer, prompt, max_tokens=8) == answer
    assert base.verify(version.ref) == []


def test_a_lora_adapter_is_published_beside_the_fused_model_and_loads_in_mlx_lm(base, tmp_path):
    result = finetune_model(base="tiny", training_file=str(write_training_file(tmp_path)),
                            hyperparameters={"method": "lora", "iters": 20, "learning_rate": 0.05, "rank": 4},
                            target="tiny-lora")
    version = base.resolve(result["version"])
    adapter = version.artifact("training")
    assert {"adapters.safetensors", "adapter_config.json", "loss_curve.png", "metrics.json"} <= {
        p.name for p in adapter.iterdir()}
    model, tokenizer = load(str(base.resolve("tiny").artifact("mlx-float16")), adapter_path=str(adapter))
    assert isinstance(generate(model, tokenizer, "def ", max_tokens=3), str)
    assert result["valid_loss_after"] < result["valid_loss_before"]


def test_a_failed_gate_publishes_nothing(base, tmp_path):
    state = finetune_model(base="tiny", training_file=str(write_training_file(tmp_path)),
                           hyperparameters={"method": "lora", "iters": 2}, suffix="weak", min_valid_loss_drop=0.9,
                           return_state=True)
    assert state.is_failed()
    assert "gate failed, nothing published" in str(state.result(raise_on_failure=False))
    assert base.names() == ["tiny"]


def test_malformed_training_data_fails_naming_the_line(base, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    state = finetune_model(base="tiny", training_file=str(bad), return_state=True)
    assert state.is_failed() and "bad.jsonl:2: 'text' must be a string" in str(state.result(raise_on_failure=False))
    assert base.names() == ["tiny"]


def test_qlora_needs_and_uses_a_quantized_base(base, tmp_path):
    result = finetune_model(base="tiny", training_file=str(write_training_file(tmp_path)),
                            hyperparameters={"method": "qlora", "iters": 5, "learning_rate": 0.01}, target="tiny-q")
    assert result["version"] == "tiny-q@1"
    assert base.resolve("tiny-q").formats == ["mlx-float16", "mlx-q4-g32", "training"]


def test_a_spec_with_fine_tune_builds_both_models(factory_root, tmp_path, tiny_model):
    write_training_file(tmp_path)
    spec = write_spec(tmp_path / "specs", {
        "name": "tutor", "source": {"local": str(tiny_model)}, "formats": [{"mlx": {"dtype": "float16"}}],
        "fine_tune": {"method": "full", "iters": 150, "learning_rate": 3e-3, "data": {"train": "../train.jsonl"},
                      "probes": probes(), "gate": {"min_valid_loss_drop": 0.5}},
    })
    row = build_model(spec=str(spec))
    assert (row["version"], row["fine_tuned"]) == ("tutor@1", "tutor-ft@1")
    tuned = Registry(Settings.from_env().registry).resolve("tutor-ft")
    assert tuned.manifest()["lineage"]["exact_match_after"] == 4


def test_factory_finetune_runs_the_same_flow_from_the_cli(base, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    train = write_training_file(tmp_path)
    result = subprocess.run([sys.executable, "-m", "factory.cli", "finetune", "tiny", "--train", str(train),
                             "--method", "full", "--iters", "150", "--learning-rate", "0.003", "--suffix", "cli"],
                            cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1].startswith("tiny-ft-cli@1: validation loss 7.0")
    assert base.resolve("tiny-ft-cli").manifest()["lineage"]["method"] == "full"
    spec = write_spec(tmp_path / "specs", {"name": "plain", "source": {"local": "."},
                                           "formats": [{"mlx": {"dtype": "float16"}}]})
    refused = subprocess.run([sys.executable, "-m", "factory.cli", "finetune", str(spec)], cwd=root,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "has no fine_tune: section" in refused.stderr
