"""Embedding settings step: how an embedding model pools and normalises (the spec's `embedding:` section over what
the source's sentence-transformers files say, over its architecture's default), resolved once per build so every
artifact, its validation and the published manifest agree."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from factory.spec import Embedding
from formats.embeddings.settings import resolve_settings
from tasks.download import SourceSnapshot


@task(task_run_name="embedding settings")
def resolve_embedding(source: SourceSnapshot, declared: Embedding) -> dict[str, Any]:
    """The artifacts' settings ({architecture, model_type, pooling, normalize, dimensions, max_tokens})."""
    settings = resolve_settings(Path(source.path), declared.pooling, declared.normalize)
    too_long = [d for d in declared.dimensions if d >= settings["dimensions"]]
    if too_long:
        raise ValueError(f"embedding.dimensions {too_long}: shorter vectors must be shorter than the model's "
                         f"{settings['dimensions']}")
    return settings


def serving_settings(settings: dict[str, Any], declared: Embedding) -> dict[str, Any]:
    """What the manifest tells the server: the artifacts' settings, the request sizes a client may ask for
    (`dimensions`: the full size and the spec's shorter ones), and the request limits."""
    return {**settings, "allowed_dimensions": sorted({settings["dimensions"], *declared.dimensions}, reverse=True),
            "max_inputs": declared.max_inputs}
