"""The validate step's judgement: expectations, gates, and the report table."""
from __future__ import annotations

import pytest

from factory.spec import Expect, Validate
from formats.checks import expectation_failure
from tasks.convert import BuiltArtifact
from tasks.validate import failures, report_markdown, validate_artifact


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
        {"format": "mlx-float16", "passed": True, "checks": [{"name": "loads", "passed": True, "value": None,
                                                               "detail": ""}]},
        {"format": "mlx-q4-g64", "passed": False, "checks": [
            {"name": "loads", "passed": True, "value": None, "detail": ""},
            {"name": "perplexity", "passed": False, "value": 99.5, "detail": "max 30"}]},
    ]
    markdown = report_markdown("m", reports)
    assert "| format | loads | perplexity | result |" in markdown
    assert "| mlx-float16 | ✅ | – | passed |" in markdown
    assert "| mlx-q4-g64 | ✅ | ❌ 99.5 | **failed** |" in markdown
    assert failures(reports) == ["mlx-q4-g64: perplexity failed (max 30)"]


def test_an_artifact_that_does_not_load_fails_validation_without_crashing(tmp_path, prefect_server):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')
    artifact = BuiltArtifact(key="mlx-float16", family="mlx", path=str(broken), identity="broken")
    report = validate_artifact(artifact, Validate(), str(tmp_path))
    assert report["passed"] is False
    [loads] = report["checks"]
    assert loads["name"] == "loads" and not loads["passed"] and loads["detail"]
