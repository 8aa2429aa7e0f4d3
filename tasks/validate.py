"""Validate step: every artifact must load, render its chat template, answer the spec's smoke prompts as expected,
and pass the spec's gates (perplexity, decode speed, peak memory). An embedding model's artifact is compared with
the original model's vectors instead (`formats/embeddings/check.py`).

The result is a report per artifact: a list of named checks, each passed or failed with its measured value. The
build publishes only when every check of every artifact passed; the same reports are stored with the version.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact

from factory.content_keys import content_key
from factory.spec import Validate
from factory.storage import sha256_file
from formats.checks import check, expectation_failure, gate
from formats.coreml.check import validate_coreml
from formats.embeddings.check import validate_embedding
from formats.gguf.check import validate_gguf
from formats.mlx_runtime import LoadedModel
from tasks.convert import BuiltArtifact

VALIDATOR_VERSION = 4  # 4: gates record their threshold and direction (a cached report from 3 would not)
# GGUF and Core ML checks run the artifact's weights in a stand-in (mlx-lm; coremltools' program evaluator), whose
# speed and memory say nothing about the artifact's own runtime.
SPEED_NOTES = {"gguf": "not measured: the prompts ran the GGUF's weights in mlx-lm, not in llama.cpp",
               "coreml": "not measured: the prompts ran the saved program in coremltools' evaluator, not in Core ML"}
FORMAT_VALIDATORS = {"gguf": validate_gguf, "coreml": validate_coreml}
SPEED_PROMPT = [{"role": "user", "content": "Count from one to twenty."}]
SPEED_TOKENS = 32


def _validate_key(context, parameters) -> str:
    checks: Validate = parameters["checks"]
    eval_path = Path(parameters["spec_dir"]) / checks.eval if checks.eval else None
    eval_digest = sha256_file(eval_path) if eval_path and eval_path.is_file() else None
    return content_key(parameters["artifact"].identity, checks, eval_digest, VALIDATOR_VERSION)


@task(cache_key_fn=_validate_key, persist_result=True, task_run_name="validate {artifact.key}")
def validate_artifact(artifact: BuiltArtifact, checks: Validate, spec_dir: str) -> dict[str, Any]:
    if artifact.embedding is not None:
        gguf_type = artifact.key.removeprefix("gguf-") if artifact.family == "gguf" else None
        results = validate_embedding(Path(artifact.path), Path(artifact.source), artifact.embedding, checks.gates,
                                     gguf_type)
        return {"format": artifact.key, "passed": all(c["passed"] for c in results), "checks": results}
    if artifact.family in FORMAT_VALIDATORS:
        # Structure and numerics against the source first; then the common checks on a model that runs the
        # artifact's own weights (GGUF: dequantized into mlx-lm; Core ML: the saved program itself).
        results, model = FORMAT_VALIDATORS[artifact.family](Path(artifact.path), Path(artifact.source))
        if model is not None:
            try:
                results += _run_checks(model, checks, Path(spec_dir), speed_note=SPEED_NOTES[artifact.family])
            finally:
                model.release()
        return {"format": artifact.key, "passed": all(c["passed"] for c in results), "checks": results}
    results: list[dict[str, Any]] = []
    try:
        model = LoadedModel.load(Path(artifact.path))
    except Exception as exc:  # a model that does not load fails validation; it must not crash the build
        results.append(check("loads", False, detail=f"{type(exc).__name__}: {exc}"))
        return {"format": artifact.key, "passed": False, "checks": results}
    results.append(check("loads", True))
    try:
        results += _run_checks(model, checks, Path(spec_dir))
    finally:
        model.release()
    return {"format": artifact.key, "passed": all(c["passed"] for c in results), "checks": results}


def _run_checks(model: LoadedModel, checks: Validate, spec_dir: Path,
                speed_note: str | None = None) -> list[dict[str, Any]]:
    results = []
    if model.has_chat_template():
        rendered = model.render([{"role": "user", "content": "ping"}])
        results.append(check("chat_template", "ping" in rendered, detail=rendered[-80:]))
    elif any(p.messages for p in checks.prompts):
        results.append(check("chat_template", False, detail="no chat template, but the spec has chat prompts"))

    for index, probe in enumerate(checks.prompts):
        prompt = model.render([m.model_dump() for m in probe.messages]) if probe.messages else probe.prompt
        text, _, _ = model.generate(prompt, probe.max_tokens)
        failure = expectation_failure(text, probe.expect)
        results.append(check(f"prompt[{index}]", failure is None, value=text, detail=failure or ""))

    gates = checks.gates
    if checks.eval:
        try:
            ppl = model.perplexity(spec_dir / checks.eval)
        except (OSError, ValueError) as exc:  # a missing or malformed eval file is a failed check, not a crash
            results.append(check("perplexity", False, detail=str(exc)))
        else:
            results.append(gate("perplexity", round(ppl, 3), "max", gates.max_perplexity))
    if speed_note is not None:  # speed and memory belong to the artifact's own runtime, not to this stand-in
        return results + [check("tokens_per_second", True, None, speed_note),
                          check("peak_memory_mb", True, None, speed_note)]
    _, tps, peak_mb = model.generate(model.render(SPEED_PROMPT) if model.has_chat_template() else "1, 2, 3,",
                                     SPEED_TOKENS)
    results.append(gate("tokens_per_second", round(tps, 2), "min", gates.min_tokens_per_second))
    results.append(gate("peak_memory_mb", round(peak_mb, 1), "max", gates.max_peak_memory_mb))
    return results


def failures(reports: list[dict[str, Any]]) -> list[str]:
    """One line per failed check, e.g. `gguf-q4_0: argmax_agreement 0.42 < min 0.6 (Q4_0)`: the one place that
    words a failure (build and fine-tune errors, the report table)."""
    return [f"{r['format']}: {c['name']} {_verdict(c)}" + (f" ({c['detail']})" if c["detail"] else "")
            for r in reports for c in r["checks"] if not c["passed"]]


def _verdict(result: dict[str, Any]) -> str:
    if "threshold" not in result:  # not a gate (formats.checks.gate): nothing measured to compare
        return "failed"
    below = result["bound"] == "min"
    return f"{result['value']:g} {'<' if below else '>'} {result['bound']} {result['threshold']:g}"


def report_markdown(spec_name: str, reports: list[dict[str, Any]]) -> str:
    """One table: a row per artifact, a column per check (value, or pass/fail)."""
    names = list(dict.fromkeys(c["name"] for r in reports for c in r["checks"]))
    lines = [f"# Validation of {spec_name}", "", "| format | " + " | ".join(names) + " | result |",
             "|---" * (len(names) + 2) + "|"]
    for report in reports:
        cells = {c["name"]: _cell(c) for c in report["checks"]}
        lines.append(f"| {report['format']} | " + " | ".join(cells.get(n, "–") for n in names)
                     + f" | {'passed' if report['passed'] else '**failed**'} |")
    problems = failures(reports)
    if problems:
        lines += ["", "Failures:", *[f"- {p}" for p in problems]]
    return "\n".join(lines) + "\n"


def _cell(result: dict[str, Any]) -> str:
    """The verdict and the measured value; a gate also shows its threshold (`✅ 22.6 (≤ 30)`)."""
    mark = "✅" if result["passed"] else "❌"
    value = result["value"]
    if isinstance(value, str):
        value = value.replace("|", "\\|").replace("\n", " ")[:40]
    if result.get("threshold") is not None:
        value = f"{value} ({'≥' if result['bound'] == 'min' else '≤'} {result['threshold']})"
    return f"{mark} {value}" if value not in (None, "") else mark


@task(task_run_name="report {spec_name}")
def record_report(spec_name: str, reports: list[dict[str, Any]]) -> str:
    """Publish the validation table as a Prefect markdown artifact; returns the markdown."""
    markdown = report_markdown(spec_name, reports)
    create_markdown_artifact(markdown, key=f"validation-{re.sub('[^a-z0-9-]', '-', spec_name)}",
                             description=f"validation of {spec_name}")
    return markdown
