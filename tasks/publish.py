"""Publish step: record validated artifacts as the next registry version, with their lineage and report.

Nothing new is published when the newest version already came from the same spec content and the same source
revision with the same formats: an unchanged rebuild is a no-op for the registry and for the servers watching it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import runtime, task
from prefect.logging import get_run_logger

from factory.registry import NotFound, Registry, Version
from tasks.convert import BuiltArtifact
from tasks.download import SourceSnapshot


@dataclass(frozen=True)
class PublishResult:
    ref: str
    published: bool  # False when the registry already held an identical version


def latest_matching(registry: Registry, name: str, spec_hash: str, revision: str,
                    formats: list[str] | None = None) -> Version | None:
    """The newest version of `name` if it was built from this spec content and source revision."""
    try:
        latest = registry.resolve(name)
    except NotFound:
        return None
    same = latest.spec_hash == spec_hash and latest.source_revision == revision
    return latest if same and (formats is None or sorted(latest.formats) == sorted(formats)) else None


@task(task_run_name="publish {name}")
def publish_version(name: str, artifacts: list[BuiltArtifact], source: SourceSnapshot, spec_hash: str,
                    reports: list[dict[str, Any]], registry_root: str, serve: dict[str, Any] | None = None,
                    lineage: dict[str, Any] | None = None, embedding: dict[str, Any] | None = None) -> PublishResult:
    registry = Registry(Path(registry_root))
    existing = latest_matching(registry, name, spec_hash, source.revision, [a.key for a in artifacts])
    if existing is not None:
        get_run_logger().info("%s is up to date; nothing published", existing.ref)
        return PublishResult(ref=existing.ref, published=False)
    version = registry.publish(
        name,
        {artifact.key: Path(artifact.path) for artifact in artifacts},
        spec_hash=spec_hash,
        source_revision=source.revision,
        flow_run_id=str(runtime.flow_run.id) if runtime.flow_run.id else None,
        report={"formats": reports},
        lineage={"source": source.origin, "source_identity": source.identity, **(lineage or {})},
        serve=serve,
        embedding=embedding,
    )
    get_run_logger().info("published %s", version.ref)
    return PublishResult(ref=version.ref, published=True)
