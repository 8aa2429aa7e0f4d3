"""`factory registry ls/show/promote/rollback/verify` and `factory spec check` through the installed console script."""
import subprocess
import sys
from pathlib import Path

import pytest

from factory.registry import Registry


def factory(*args: str, registry) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("factory")), "registry", "--registry", str(registry), *args]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.fixture
def registry(tmp_path):
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    (artifact / "model.safetensors").write_bytes(b"\0" * 4096)
    registry = Registry(tmp_path / "registry")
    for _ in range(3):
        registry.publish("tiny", {"mlx-float16": artifact, "mlx-q4-g64": artifact}, spec_hash="f00", report={
            "formats": [{"format": "mlx-q4-g64", "passed": False, "checks": [
                {"name": "loads", "passed": True, "value": None, "detail": ""},
                {"name": "prompt[0]", "passed": True, "value": "The answer\nis 4.", "detail": ""},
                {"name": "perplexity", "passed": False, "value": 99.5, "detail": "", "bound": "max",
                 "threshold": 30}]}]})
    registry.publish("other", {"gguf-q4_0": artifact / "model.safetensors"})
    return registry


def test_ls_lists_every_version_with_formats_and_aliases(registry):
    result = factory("ls", registry=registry.root)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["VERSION", "CREATED", "FORMATS", "ALIASES"]
    assert [line.split()[0] for line in lines[1:]] == ["other@1", "tiny@1", "tiny@2", "tiny@3"]
    assert lines[-1].endswith("mlx-float16, mlx-q4-g64  latest")
    assert len(factory("ls", "tiny", registry=registry.root).stdout.splitlines()) == 4


def test_show_prints_lineage_files_and_report(registry):
    result = factory("show", "tiny@2", registry=registry.root)
    assert result.returncode == 0
    assert result.stdout.startswith("tiny@2  (no aliases)")
    assert "spec_hash        f00" in result.stdout
    assert "mlx-q4-g64       1 files, 4.0 KiB" in result.stdout
    # every check with its verdict and measured value; a gate with its threshold
    assert "  validation of mlx-q4-g64: FAILED" in result.stdout
    assert "    prompt[0]                    ok    The answer is 4." in result.stdout
    assert "    perplexity                   FAIL  99.5 (max 30)" in result.stdout


def test_promote_then_rollback(registry):
    assert factory("promote", "tiny@1", "prod", registry=registry.root).stdout.strip() == "tiny@prod -> tiny@1"
    assert factory("promote", "tiny@3", "prod", registry=registry.root).stdout.strip() == "tiny@prod -> tiny@3"
    assert factory("rollback", "tiny", registry=registry.root).stdout.strip() == "tiny@prod -> tiny@1"
    assert "prod" in factory("show", "tiny@prod", registry=registry.root).stdout.splitlines()[0]
    failed = factory("rollback", "tiny", registry=registry.root)
    assert failed.returncode == 1 and "no earlier version" in failed.stderr


def test_verify_passes_then_catches_a_flipped_byte(registry):
    assert factory("verify", registry=registry.root).returncode == 0
    weights = registry.resolve("tiny@2").path / "mlx-q4-g64" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0x80
    weights.write_bytes(bytes(data))
    result = factory("verify", registry=registry.root)
    assert result.returncode == 1
    assert "tiny@2: mlx-q4-g64/model.safetensors does not match its sha256" in result.stdout
    assert "tiny@1: ok" in result.stdout and "tiny@3: ok" in result.stdout


def test_unknown_ref_is_a_clear_error(registry):
    result = factory("show", "nope@1", registry=registry.root)
    assert result.returncode == 1 and result.stderr.strip() == "error: nope@1 does not exist"


def test_spec_check_accepts_speculative_decoding_settings_without_warning(tmp_path):
    spec = tmp_path / "x.yaml"
    spec.write_text("name: x\n"
                    "source: {local: model}\n"
                    "formats: [{mlx: {dtype: float16}}]\n"
                    "serve:\n"
                    "  aliases: [default]\n"
                    "  draft: x-draft@prod\n"
                    "  prompt_lookup: true\n")
    command = [str(Path(sys.executable).with_name("factory")), "spec", "check", str(spec)]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [f"{spec}: ok (x, 1 formats)"]
    spec.write_text(spec.read_text().replace("x-draft@prod", "X Draft"))
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1 and f"{spec}:6: serve.draft:" in result.stdout
