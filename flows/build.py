"""Build flows: a spec becomes validated, published artifacts.

    build_model(spec) = download → normalise → [embedding settings] → convert × formats → validate × formats
                        → report → publish
    build_all()       = build_model for every spec in specs/ whose build input or source changed since its last version

Orchestration only: each step is a task in `tasks/`. Steps are content-cached, so an unchanged rebuild costs seconds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from factory.registry import Registry
from factory.settings import Settings
from factory.spec import LoadedSpec, SpecError, discover_specs, find_spec, load_spec
from flows.caching import refreshed_if_missing
from flows.finetune import finetune_model
from flows.setup import ensure_heavy_limit
from tasks.convert import artifact_dir, convert_format, wait_for_conversions
from tasks.download import download_source, source_revision
from tasks.embedding_settings import resolve_embedding, serving_settings
from tasks.normalize import normalise_checkpoint
from tasks.publish import latest_matching, publish_version
from tasks.validate import failures, record_report, validate_artifact


class BuildFailed(Exception):
    """A build that must not publish: a validation check or gate failed."""


# persist_result: build_all reads each build's row from the subflow's state, and a state the engine had to re-read
# from the API (seen once under load) carries no data unless the result was persisted.
@flow(name="build-model", flow_run_name="build {spec}", task_runner=ThreadPoolTaskRunner(max_workers=4),
      persist_result=True)
def build_model(spec: str, specs_dir: str = "specs") -> dict[str, Any]:
    """Build one spec (a path, or a spec name looked up in `specs_dir`) and publish it if it passes validation."""
    loaded = load_spec(find_spec(spec, specs_dir))
    model, spec_dir, settings = loaded.spec, str(loaded.path.parent), Settings.from_env()
    runs = str(settings.runs)
    ensure_heavy_limit()

    source = download_source(model.source, spec_dir, str(settings.hub_cache))
    source = normalise_checkpoint(source, runs)
    embedding = resolve_embedding(source, model.embedding) if model.task == "embedding" else None
    conversions = [refreshed_if_missing(convert_format, artifact_dir(source, entry, runs, embedding))
                   .submit(source, entry, runs, embedding) for entry in model.formats]
    artifacts = wait_for_conversions(conversions)

    reports = [validate_artifact(artifact, model.validate_, spec_dir) for artifact in artifacts]
    record_report(model.name, reports)
    if problems := failures(reports):
        raise BuildFailed(f"{model.name}: validation failed, nothing published:\n" + "\n".join(problems))

    result = publish_version(model.name, artifacts, source, model.content_hash(), reports, str(settings.registry),
                             serve=model.serve.model_dump(mode="json"),
                             embedding=serving_settings(embedding, model.embedding) if embedding else None)
    row = {"spec": model.name, "formats": [a.key for a in artifacts], "gates": "passed", "version": result.ref,
           "status": "published" if result.published else "up to date"}
    if model.fine_tune is not None:  # the base passed validation: refresh its fine-tuned model too
        row["fine_tuned"] = finetune_model(**spec_finetune_parameters(loaded, result.ref))["version"]
    return row


def spec_finetune_parameters(loaded: LoadedSpec, base_ref: str) -> dict[str, Any]:
    """finetune_model's parameters for a spec's `fine_tune:` section."""
    tune = loaded.spec.fine_tune
    hyperparameters = {"method": tune.method, "iters": tune.iters, "epochs": tune.epochs,
                       "batch_size": tune.batch_size, "learning_rate": tune.learning_rate, "rank": tune.rank,
                       "layers": tune.layers}
    return {
        "base": base_ref, "training_file": str(loaded.resolve(tune.data.train)),
        "validation_file": str(loaded.resolve(tune.data.valid)) if tune.data.valid else None,
        "hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None},
        "target": tune.target or f"{loaded.spec.name}-ft", "probes": [p.model_dump(mode="json") for p in tune.probes],
        "min_valid_loss_drop": tune.gate.min_valid_loss_drop,
    }


@flow(name="build-all")
def build_all(specs_dir: str = "specs") -> list[dict[str, Any]]:
    """Build every spec in `specs_dir` (`discover_specs`: recursive, not `examples/`) whose build input changed
    since its last published version."""
    registry = Registry(Settings.from_env().registry)
    rows = []
    for path in discover_specs([specs_dir]):
        rows.append(_build_if_changed(path, registry, specs_dir))
    create_table_artifact(rows, key="build-all", description="build-all summary")
    failed = [row for row in rows if row["status"] in ("failed", "invalid")]
    if failed:
        raise BuildFailed("\n".join(f"{row['spec']}: {row['detail']}" for row in failed))
    return rows


def _build_if_changed(path: Path, registry: Registry, specs_dir: str) -> dict[str, Any]:
    try:
        loaded = load_spec(path)
    except SpecError as exc:
        return invalid_row(str(path.relative_to(specs_dir)), exc)
    current = _current_version(loaded, registry)
    if current is not None:
        return {"spec": loaded.spec.name, "formats": ", ".join(current.formats), "gates": "passed",
                "version": current.ref, "status": "up to date", "detail": ""}
    return build_row(loaded.spec.name, str(path), specs_dir)


def build_row(name: str, spec: str, specs_dir: str) -> dict[str, Any]:
    """Run build_model as a (sub)flow and describe its outcome as one summary row."""
    state = build_model(spec=spec, specs_dir=specs_dir, return_state=True)
    if state.is_failed():
        return {"spec": name, "formats": "", "gates": "failed", "version": "", "status": "failed",
                "detail": str(state.result(raise_on_failure=False))}
    row = state.result()
    return {**row, "formats": ", ".join(row["formats"]), "detail": ""}


def invalid_row(spec: str, error: SpecError) -> dict[str, Any]:
    return {"spec": spec, "formats": "", "gates": "", "version": "", "status": "invalid", "detail": str(error)}


def _current_version(loaded: LoadedSpec, registry: Registry):
    revision = source_revision(loaded.spec.source, str(loaded.path.parent))
    return latest_matching(registry, loaded.spec.name, loaded.spec.content_hash(), revision)
