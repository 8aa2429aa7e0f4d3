"""The validate step's judgement: expectations, gates, and the report table."""
from __future__ import annotations

import pytest

from factory.spec import Expect, Validate
from formats.checks import check, expectation_failure, gate
from tasks.convert import BuiltArtifact
from tasks.validate import _run_checks, failures, report_markdown, validate_artifact


@pytest.mark.parametrize("expect, text, failure", [
    (None, "anything", None),
    (Expect(contains="4"), "2+2=4", None),
    (Expect(contains="4"), "five", "expected the answer to contain '4'"),
    (Expect(regex=r"^\d+$"), "42", None),
    (Expect(regex=r"^\d+$"), "forty", r"expected the answer to match /^\d+$/"),
    (Expect(max_length=3), "four", "expected at most 3 characters, got 4"),
])
def test_expectations(expect, text, failure):
    assert expectation_failure(text, expect) == failure


def test_report_table_has_a_row_per_format_and_lists_failures():
    reports = [
        {"format": "mlx-float16", "passed": True, "checks": [check("loads", True)]},
        {"format": "mlx-q4-g64", "passed": False,
         "checks": [check("loads", True), gate("perplexity", 99.5, "max", 30)]},
    ]
    markdown = report_markdown("m", reports)
    assert "| format | loads | perplexity | result |" in markdown
    assert "| mlx-float16 | ✅ | – | passed |" in markdown
    assert "| mlx-q4-g64 | ✅ | ❌ 99.5 (≤ 30) | **failed** |" in markdown  # a gate shows its threshold
    assert failures(reports) == ["mlx-q4-g64: perplexity 99.5 > max 30"]
    assert "- mlx-q4-g64: perplexity 99.5 > max 30" in markdown


@pytest.mark.parametrize("value, bound, threshold, passed", [
    (0.6, "min", 0.6, True), (0.42, "min", 0.6, False), (0.02, "max", 0.02, True), (0.5, "max", 0.02, False),
    (float("nan"), "min", 0.6, False), (float("nan"), "max", 0.02, False), (0.01, "min", None, True),
])
def test_a_gate_records_its_value_threshold_and_direction(value, bound, threshold, passed):
    result = gate("argmax_agreement", value, bound, threshold)
    assert result["passed"] is passed and result["value"] is value
    if threshold is None:  # nothing to compare against: recorded, not judged
        assert "threshold" not in result
    else:
        assert (result["bound"], result["threshold"]) == (bound, threshold)


def test_a_failed_gate_says_the_measured_value_and_the_threshold():
    reports = [{"format": "gguf-q4_0", "passed": False, "checks": [
        gate("argmax_agreement", 0.42, "min", 0.6, "Q4_0"), gate("logit_error", 0.5, "max", 0.35),
        gate("tokens_per_second", 12.5, "min", 1),
        check("prompt[0]", False, "hi", "expected the answer to contain '4'")]}]
    assert failures(reports) == ["gguf-q4_0: argmax_agreement 0.42 < min 0.6 (Q4_0)",
                                 "gguf-q4_0: logit_error 0.5 > max 0.35",
                                 "gguf-q4_0: prompt[0] failed (expected the answer to contain '4')"]


class ScriptedModel:
    """What _run_checks needs of a loaded model, with fixed measurements."""

    def has_chat_template(self):
        return False

    def generate(self, prompt, max_tokens):
        return "1, 2, 3", 4.25, 900.0

    def perplexity(self, path):
        return 42.0


def test_the_spec_gates_are_recorded_with_their_thresholds(tmp_path):
    gates = {"max_perplexity": 30, "min_tokens_per_second": 5, "max_peak_memory_mb": 1000}
    results = _run_checks(ScriptedModel(), Validate(eval="eval.jsonl", gates=gates), tmp_path)
    assert failures([{"format": "mlx-float16", "checks": results}]) == [
        "mlx-float16: perplexity 42 > max 30", "mlx-float16: tokens_per_second 4.25 < min 5"]
    memory = next(r for r in results if r["name"] == "peak_memory_mb")
    assert memory["passed"] and (memory["value"], memory["bound"], memory["threshold"]) == (900.0, "max", 1000)


def test_an_artifact_that_does_not_load_fails_validation_without_crashing(tmp_path, prefect_server):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    artifact = BuiltArtifact(key="mlx-float16", family="mlx", path=str(broken), identity="broken")
    report = validate_artifact(artifact, Validate(), str(tmp_path))
    assert report["passed"] is False
    [loads] = report["checks"]
    assert loads["name"] == "loads" and not loads["passed"] and loads["detail"]
