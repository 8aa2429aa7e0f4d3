"""What a registry version says about itself to clients: formats with readable quantization labels, the context
length, and the engine this host would serve it with."""
from __future__ import annotations

from factory.registry import Version
from factory.spec import Serve
from serving.inference.local.select import NoEngine, select_artifact
from serving.inference.types import ModelInfo

COREML_COMPRESSION = {"int8": "8-bit linear", "palettize4": "4-bit palettized"}


def model_info(model_id: str, version: Version, serve: Serve, aliases: list[str], loaded: bool) -> ModelInfo:
    return ModelInfo(id=model_id, ref=version.ref, name=version.name, version=version.version,
                     created=version.created, aliases=aliases, formats=version.formats,
                     quantization={key: quantization_label(key) for key in version.formats},
                     context_length=serve.context_length, engine=engine_name(version, serve), loaded=loaded)


def engine_name(version: Version, serve: Serve) -> str | None:
    try:
        engine, _ = select_artifact(version, serve.engine)
    except NoEngine:
        return None
    return engine.name


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
