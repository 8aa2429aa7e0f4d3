"""What a registry version says about itself to clients: formats with readable quantization labels, the context
length, the engine this host would serve it with, its task (`chat`, or `embedding` with the vectors it makes) and
its capabilities (`capabilities.py`: read from the artifact's files, never by loading it)."""
from __future__ import annotations

from typing import Any

from factory.registry import Version
from factory.spec import Serve
from serving.inference.local.capabilities import EMBEDDING, chat_capabilities
from serving.inference.local.select import NoEngine, select_artifact, select_embedding_artifact
from serving.inference.types import ModelInfo

COREML_COMPRESSION = {"int8": "8-bit linear", "palettize4": "4-bit palettized"}


def model_info(model_id: str, version: Version, serve: Serve, aliases: list[str], loaded: bool,
               embedding: dict[str, Any] | None = None) -> ModelInfo:
    """`embedding`: the manifest's section of an embedding model (None for a chat model)."""
    context = serve.context_length if embedding is None else min(serve.context_length, embedding["max_tokens"])
    return ModelInfo(id=model_id, ref=version.ref, name=version.name, version=version.version,
                     created=version.created, aliases=aliases, formats=version.formats,
                     quantization={key: quantization_label(key) for key in version.formats},
                     context_length=context, engine=engine_name(version, serve, embedding is not None), loaded=loaded,
                     extra=task_fields(embedding, context) | capability_fields(version, serve, embedding))


def task_fields(embedding: dict[str, Any] | None, context: int) -> dict[str, Any]:
    """What /v1/models says a model is for: `task`, and for an embedding model the vectors and limits."""
    if embedding is None:
        return {"task": "chat"}
    return {"task": "embedding", "embedding": {
        "dimensions": embedding["dimensions"], "allowed_dimensions": embedding["allowed_dimensions"],
        "pooling": embedding["pooling"], "normalized": embedding["normalize"], "max_input_tokens": context,
        "max_inputs": embedding["max_inputs"]}}


def capability_fields(version: Version, serve: Serve, embedding: dict[str, Any] | None) -> dict[str, Any]:
    """`capabilities`, and for a chat model `tool_template` (native: its template renders tools; fallback: the
    server's own tool prompt does)."""
    if embedding is not None:
        return {"capabilities": list(EMBEDDING)}
    try:
        engine, key = select_artifact(version, serve.engine)
        artifact, family = version.artifact(key), engine.family
    except NoEngine:  # nothing here runs it: what a chat model does, without what its vocabulary would add
        artifact, family = None, None
    capabilities, tool_template = chat_capabilities(artifact, family)
    return {"capabilities": capabilities, "tool_template": tool_template}


def engine_name(version: Version, serve: Serve, embeds: bool = False) -> str | None:
    try:
        if embeds:
            return select_embedding_artifact(version, serve.engine)[0]
        return select_artifact(version, serve.engine)[0].name
    except NoEngine:
        return None


def quantization_label(format_key: str) -> str:
    """`mlx-q4-g64` -> `4-bit, group 64`; `coreml-float16-palettize4` -> `4-bit palettized, float16`; float formats
    -> their dtype."""
    parts = format_key.split("-")[1:]
    if format_key.startswith("coreml-") and len(parts) == 2:
        return f"{COREML_COMPRESSION.get(parts[1], parts[1])}, {parts[0]}"
    if parts and parts[0].startswith("q") and parts[0][1:].isdigit():
        group = f", group {parts[1][1:]}" if len(parts) > 1 and parts[1].startswith("g") else ""
        return f"{parts[0][1:]}-bit{group}"
    return "-".join(parts) or format_key
