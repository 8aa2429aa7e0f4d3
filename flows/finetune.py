"""Fine-tuning flow: a registry model plus a JSONL file become a new, validated registry model.

    finetune_model = prepare data → train (evaluate before/after) → report → gate → convert × the base's MLX
                     formats → validate → publish `<base>-ft-<suffix>` (or `target`) with lineage to the base version

The same flow runs from a spec's `fine_tune:` (inside build_model), `factory finetune`, and the server's
OpenAI fine-tuning API (through the `finetune-model/on-demand` deployment).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from factory.content_keys import content_key
from factory.jobs import FINETUNE_FLOW, RESULT_ARTIFACT
from factory.registry import Registry, Version
from factory.settings import Settings
from factory.spec import FormatEntry, Validate
from flows.caching import refreshed_if_missing
from flows.setup import ensure_heavy_limit
from tasks.convert import BuiltArtifact, artifact_dir, convert_format, wait_for_conversions
from tasks.download import snapshot_local
from tasks.finetune import TrainingSettings, prepare_training_data, train_and_fuse
from tasks.loss_curve import record_training_report
from tasks.publish import publish_version
from tasks.validate import failures, record_report, validate_artifact


class FineTuneFailed(Exception):
    """The fine-tune must not be published: its gate failed or its output did not validate."""


@flow(name=FINETUNE_FLOW, flow_run_name="finetune {base}", task_runner=ThreadPoolTaskRunner(max_workers=4))
def finetune_model(base: str, training_file: str, validation_file: str | None = None,
                   hyperparameters: dict[str, Any] | None = None, suffix: str | None = None,
                   target: str | None = None, probes: list[dict[str, Any]] | None = None,
                   min_valid_loss_drop: float = 0.0, seed: int = 0) -> dict[str, Any]:
    settings = Settings.from_env()
    registry = Registry(settings.registry)
    base_version = registry.resolve(base)
    training = TrainingSettings.from_hyperparameters(hyperparameters or {}, seed=seed)
    name = target or f"{base_version.name}-ft-{suffix or 'tuned'}"
    runs = str(settings.runs)
    ensure_heavy_limit()

    data = prepare_training_data(training_file, validation_file, runs, seed)
    work = Path(runs) / "finetune" / content_key(data.digest, base_version.ref, training, probes)[:24]
    outcome = train_and_fuse(str(base_version.artifact(_training_artifact(base_version, training.method))), data,
                             training, probes or [], str(work))
    record_training_report(name, outcome)
    if not outcome.valid_loss_drop >= min_valid_loss_drop:  # written so that a NaN loss fails too
        raise FineTuneFailed(f"{name}: gate failed, nothing published: validation loss went "
                             f"{outcome.valid_loss_before:.4f} -> {outcome.valid_loss_after:.4f} "
                             f"({outcome.valid_loss_drop:.1%} lower; the gate asks for {min_valid_loss_drop:.0%})")

    fused = snapshot_local(Path(outcome.fused))
    formats = [FormatEntry.from_mlx_key(key) for key in base_version.formats if key.startswith("mlx-")]
    conversions = [refreshed_if_missing(convert_format, artifact_dir(fused, entry, runs)).submit(fused, entry, runs)
                   for entry in formats]
    artifacts = wait_for_conversions(conversions)
    checks = Validate(prompts=probes or [])
    reports = [validate_artifact(artifact, checks, ".") for artifact in artifacts]
    record_report(name, reports)
    if problems := failures(reports):
        raise FineTuneFailed(f"{name}: validation failed, nothing published:\n" + "\n".join(problems))

    training_artifact = BuiltArtifact(key="training", family="training", path=outcome.directory,
                                      identity=content_key(work.name))
    lineage = {"base": base_version.ref, "method": training.method, "iterations": outcome.iterations,
               "trained_tokens": outcome.trained_tokens, "data_digest": data.digest,
               "valid_loss_before": outcome.valid_loss_before, "valid_loss_after": outcome.valid_loss_after,
               "exact_match_before": outcome.exact_match_before, "exact_match_after": outcome.exact_match_after,
               "job": str(runtime.flow_run.id) if runtime.flow_run.id else None}
    manifest_serve = base_version.manifest().get("serve", {})
    result = publish_version(name, [*artifacts, training_artifact], fused, content_key(lineage["base"], training,
                             data.digest, probes), reports, str(settings.registry),
                             serve={**manifest_serve, "aliases": []}, lineage=lineage)
    # The job's model is this ref whether it was published now or already held by an identical earlier run; the
    # server reads it from this artifact (a rerun's own run id names no registry version).
    create_markdown_artifact(key=RESULT_ARTIFACT, markdown=result.ref, description="the fine-tuned model's id")
    return {"model": name, "version": result.ref, "trained_tokens": outcome.trained_tokens,
            "valid_loss_before": outcome.valid_loss_before, "valid_loss_after": outcome.valid_loss_after,
            "exact_match_before": outcome.exact_match_before, "exact_match_after": outcome.exact_match_after}


def _training_artifact(version: Version, method: str) -> str:
    """QLoRA trains on a quantized artifact; the other methods on the most precise float one."""
    floats = [k for k in ("mlx-float32", "mlx-bfloat16", "mlx-float16") if k in version.formats]
    quantized = [k for k in version.formats if k.startswith("mlx-q") or k == "mlx-mxfp4"]
    choice = quantized[:1] if method == "qlora" else floats[:1]
    if not choice:
        wanted = "a quantized MLX" if method == "qlora" else "a float MLX"
        raise FineTuneFailed(f"{version.ref} has no {wanted} artifact to train {method} on "
                             f"(formats: {', '.join(version.formats)})")
    return choice[0]
