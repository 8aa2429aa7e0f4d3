"""build_model / build_all against a real Prefect server, the local hub and a real registry."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from factory.registry import Registry
from factory.settings import Settings
from flows.build import build_all, build_model
from tests.fixtures.local_hub import LocalHub
from tests.flows.helpers import task_states, write_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("prefect_server")


def hub_spec(tmp_path: Path, **changes) -> Path:
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text(json.dumps({"text": "def main():\n    return 42\n"}) + "\n"
                         + json.dumps({"messages": [{"role": "user", "content": "hello"}]}) + "\n")
    body = {
        "name": "tiny",
        "source": {"hf": "tiny/llama", "revision": "main"},
        "formats": [{"mlx": {"dtype": "float16"}}, {"mlx": {"quantize": {"bits": 4, "group_size": 32}}},
                    {"mlx": {"quantize": {"bits": 8, "group_size": 32}}}],
        "validate": {"prompts": [{"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8,
                                  "expect": {"max_length": 500}}],
                     "eval": "../eval.jsonl", "gates": {"max_perplexity": 1e6, "min_tokens_per_second": 0.1}},
    }
    return write_spec(tmp_path / "specs", body | changes)


def registry() -> Registry:
    return Registry(Settings.from_env().registry)


def test_hub_spec_is_downloaded_converted_validated_and_published(tmp_path, factory_root, local_hub):
    state = build_model(spec=str(hub_spec(tmp_path)), return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["status"] == "published"
    [version] = registry().list()
    assert version.ref == "tiny@1"
    assert version.formats == ["mlx-float16", "mlx-q4-g32", "mlx-q8-g32"]
    commit = local_hub.repos["tiny/llama"].commit
    assert version.source_revision == commit
    manifest = version.manifest()
    assert manifest["lineage"]["source"] == f"hf:tiny/llama@{commit}"
    assert manifest["flow_run_id"] == str(state.state_details.flow_run_id)
    reports = manifest["report"]["formats"]
    assert [r["format"] for r in reports] == version.formats and all(r["passed"] for r in reports)
    checks = {c["name"]: c for c in reports[0]["checks"]}
    assert set(checks) == {"loads", "chat_template", "prompt[0]", "perplexity", "tokens_per_second", "peak_memory_mb"}
    assert 1 < checks["perplexity"]["value"] < 1e6 and checks["tokens_per_second"]["value"] > 0
    assert registry().verify("tiny@1") == []
    # the hub cache lives under the factory root, so a rebuild reuses it
    assert any((factory_root / "hub-cache").glob("models--tiny--llama/blobs/*"))
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    tables = [a for a in artifact if a.key == "validation-tiny"]
    assert tables and "| mlx-q4-g32 |" in tables[0].data


def test_unchanged_rebuild_hits_the_cache_and_changing_a_format_rebuilds_only_it(tmp_path, factory_root, local_hub):
    spec = hub_spec(tmp_path)
    assert build_model(spec=str(spec)).get("status") == "published"

    again = build_model(spec=str(spec), return_state=True)
    assert again.result()["status"] == "up to date"
    states = task_states(again.state_details.flow_run_id)
    assert {states[f"convert {k}"] for k in ("mlx-float16", "mlx-q4-g32", "mlx-q8-g32")} == {"Cached"}
    assert [v.ref for v in registry().list()] == ["tiny@1"]

    text = spec.read_text().replace("bits: 8", "bits: 6")
    spec.write_text(text)
    changed = build_model(spec=str(spec), return_state=True)
    states = task_states(changed.state_details.flow_run_id)
    assert states["convert mlx-float16"] == states["convert mlx-q4-g32"] == "Cached"
    assert states["convert mlx-q6-g32"] == "Completed"
    assert changed.result()["version"] == "tiny@2"
    assert registry().resolve("tiny").formats == ["mlx-float16", "mlx-q4-g32", "mlx-q6-g32"]


def test_an_unmet_smoke_expectation_fails_the_build_and_publishes_nothing(tmp_path, factory_root, local_hub):
    spec = hub_spec(tmp_path, validate={"prompts": [{"prompt": "2+2=", "max_tokens": 4,
                                                     "expect": {"contains": "the answer is 4"}}]})
    state = build_model(spec=str(spec), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "validation failed, nothing published" in message
    assert "mlx-float16: prompt[0] failed (expected the answer to contain 'the answer is 4')" in message
    assert registry().list() == []


def test_a_failed_gate_names_the_gate_its_measured_value_and_threshold(tmp_path, factory_root, local_hub):
    spec = hub_spec(tmp_path)
    spec.write_text(spec.read_text().replace("max_perplexity: 1000000.0", "max_perplexity: 1.5"))
    state = build_model(spec=str(spec), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert re.search(r"^mlx-float16: perplexity [\d.e+]+ > max 1\.5$", message, re.MULTILINE), message
    assert registry().list() == []


def test_a_corrupted_hub_file_fails_verification_and_publishes_nothing(tmp_path, factory_root, tiny_model,
                                                                       monkeypatch):
    with LocalHub() as hub:
        hub.add_repo("tiny/llama", tiny_model)
        hub.corrupt("tiny/llama", "model.safetensors")
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        state = build_model(spec=str(hub_spec(tmp_path)), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "model.safetensors failed verification" in message
    assert registry().list() == []


def test_core_ml_packages_are_built_validated_and_published(tmp_path, factory_root, local_hub):
    formats = [{"mlx": {"dtype": "float16"}}, {"coreml": {"precision": "float16", "compress": "palettize4",
                                                          "context_length": 256}}]
    state = build_model(spec=str(hub_spec(tmp_path, formats=formats)), return_state=True)
    assert state.is_completed(), state.message
    version = registry().resolve("tiny")
    assert version.formats == ["coreml-float16-palettize4", "mlx-float16"]
    package = version.artifact("coreml-float16-palettize4")
    assert (package / "model.mlpackage" / "Manifest.json").is_file() and (package / "tokenizer.json").is_file()
    [report] = [r for r in version.manifest()["report"]["formats"] if r["format"] == "coreml-float16-palettize4"]
    checks = {c["name"]: c for c in report["checks"]}
    assert {"kv_states", "weight_bytes", "argmax_agreement", "chat_template", "prompt[0]", "perplexity"} <= set(checks)
    assert 1 < checks["perplexity"]["value"] < 1e6  # computed by the saved program itself


def test_an_architecture_a_format_cannot_export_fails_with_its_reason(tmp_path, factory_root, tiny_model):
    source = tmp_path / "gemma"
    shutil.copytree(tiny_model, source)
    config = json.loads((source / "config.json").read_text()) | {"model_type": "gemma"}
    (source / "config.json").write_text(json.dumps(config))
    spec = write_spec(tmp_path / "specs", {"name": "gemma", "source": {"local": "../gemma"},
                                           "formats": [{"coreml": {"precision": "float16"}}]})
    state = build_model(spec=str(spec), return_state=True)
    assert state.is_failed()
    assert "Core ML export supports llama, qwen2, not model_type 'gemma'" in str(state.result(raise_on_failure=False))
    assert registry().list() == []


def test_a_pickled_checkpoint_is_normalised_to_safetensors(tmp_path, factory_root, tiny_model):
    import torch
    from safetensors.torch import load_file

    source = tmp_path / "pickled"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (source / name).write_bytes((tiny_model / name).read_bytes())
    tensors = load_file(tiny_model / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]  # tied: one storage, two names
    torch.save(tensors, source / "pytorch_model.bin")
    spec = write_spec(tmp_path / "specs", {"name": "pickled", "source": {"local": "../pickled"},
                                           "formats": [{"mlx": {"dtype": "float16"}}]})
    result = build_model(spec=str(spec))
    assert result["status"] == "published"
    version = registry().resolve("pickled")
    assert version.source_revision.startswith("sha256:")
    assert not list(version.artifact("mlx-float16").glob("*.bin"))


def test_build_all_builds_what_changed_and_reports_the_rest_up_to_date(tmp_path, factory_root, tiny_model):
    specs = tmp_path / "specs"
    for name in ("alpha", "beta"):
        write_spec(specs, {"name": name, "source": {"local": str(tiny_model)},
                           "formats": [{"mlx": {"dtype": "float16"}}]})
    first = {row["spec"]: row["status"] for row in build_all(specs_dir=str(specs))}
    assert first == {"alpha": "published", "beta": "published"}
    beta = specs / "beta.yaml"
    beta.write_text(beta.read_text().replace("float16", "bfloat16"))
    second = {row["spec"]: (row["status"], row["version"]) for row in build_all(specs_dir=str(specs))}
    assert second == {"alpha": ("up to date", "alpha@1"), "beta": ("published", "beta@2")}


def test_cli_build_prints_a_summary_table(tmp_path, factory_root, tiny_model):
    specs = tmp_path / "specs"
    write_spec(specs, {"name": "gamma", "source": {"local": str(tiny_model)}, "formats": [{"mlx": {"dtype": "float16"}}]})
    write_spec(specs, {"name": "broken", "source": {"local": str(tmp_path / "absent")},
                       "formats": [{"mlx": {"dtype": "float16"}}]})
    result = subprocess.run([sys.executable, "-m", "factory.cli", "build", "gamma", "broken", "--specs-dir", str(specs)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 1
    table = result.stdout[result.stdout.index("SPEC"):].splitlines()
    assert table[0].split() == ["SPEC", "FORMATS", "GATES", "VERSION", "STATUS"]
    assert table[1].split() == ["gamma", "mlx-float16", "passed", "gamma@1", "published"]
    assert table[2].split() == ["broken", "failed", "failed"]
    assert "does not exist" in result.stderr


def test_gguf_formats_are_exported_validated_and_published(tmp_path, factory_root, tiny_model):
    spec = write_spec(tmp_path / "specs", {
        "name": "both", "source": {"local": str(tiny_model)},
        "formats": [{"mlx": {"dtype": "float16"}}, {"gguf": {"type": "q8_0"}}, {"gguf": {"type": "q4_0"}}],
        "validate": {"prompts": [{"prompt": "def ", "max_tokens": 4, "expect": {"max_length": 200}}]}})
    assert build_model(spec=str(spec))["status"] == "published"
    version = registry().resolve("both")
    assert version.formats == ["gguf-q4_0", "gguf-q8_0", "mlx-float16"]
    assert [p.name for p in version.artifact("gguf-q4_0").iterdir()] == ["model-q4_0.gguf"]
    reports = {r["format"]: {c["name"]: c for c in r["checks"]} for r in version.manifest()["report"]["formats"]}
    assert reports["gguf-q8_0"]["argmax_agreement"]["value"] >= 0.9
    assert reports["gguf-q4_0"]["prompt[0]"]["passed"]
    assert "not measured" in reports["gguf-q4_0"]["tokens_per_second"]["detail"]


def test_a_gguf_file_as_source_builds_mlx_formats(tmp_path, factory_root, tiny_model):
    from formats.gguf.export import export_gguf

    gguf = export_gguf(tiny_model, tmp_path / "tiny-q8_0.gguf", "q8_0")
    spec = write_spec(tmp_path / "specs", {"name": "from-gguf", "source": {"local": "../tiny-q8_0.gguf"},
                                           "formats": [{"mlx": {"dtype": "float16"}}]})
    assert build_model(spec=str(spec))["status"] == "published"
    assert registry().resolve("from-gguf").source_revision.startswith("sha256:")
    unknown = write_spec(tmp_path / "specs", {"name": "unknown", "source": {"local": "../tiny-q8_0.gguf.txt"},
                                              "formats": [{"mlx": {"dtype": "float16"}}]})
    (tmp_path / "tiny-q8_0.gguf.txt").write_bytes(gguf.read_bytes())
    state = build_model(spec=str(unknown), return_state=True)
    assert state.is_failed() and "tiny-q8_0.gguf.txt: not a model file" in str(state.result(raise_on_failure=False))

    (tmp_path / "truncated.gguf").write_bytes(gguf.read_bytes()[: gguf.stat().st_size // 3])
    truncated = write_spec(tmp_path / "specs", {"name": "truncated", "source": {"local": "../truncated.gguf"},
                                                "formats": [{"mlx": {"dtype": "float16"}}]})
    state = build_model(spec=str(truncated), return_state=True)
    assert state.is_failed() and "truncated.gguf is not a readable GGUF file" in str(
        state.result(raise_on_failure=False))
    assert [v.name for v in registry().list()] == ["from-gguf"]  # neither bad source published anything
