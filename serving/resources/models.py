"""GET /v1/models and /v1/models/{id}: registry models with their metadata."""
from __future__ import annotations

from serving.errors import model_not_found
from serving.engines import NoEngine, select_artifact
from serving.pool import ModelPool, UnknownModel


class Models:
    def __init__(self, pool: ModelPool):
        self.pool = pool

    async def on_get(self, req, resp):
        data = []
        for route in sorted(self.pool.routes):
            data.append(await self._describe(route))
        resp.media = {"object": "list", "data": data}

    async def on_get_one(self, req, resp, model_id: str):
        try:
            resp.media = await self._describe(model_id)
        except UnknownModel as exc:
            raise model_not_found(model_id, str(exc)) from None

    async def _describe(self, model_id: str) -> dict:
        version = await self.pool.resolve(model_id)
        manifest = await self.pool.describe(version)
        serve = manifest.get("serve", {})
        aliases = [f"{version.name}@{alias}" for alias in version.aliases]
        aliases += [alias for alias, ref in self.pool.routes.items() if ref == version.ref and alias != version.name]
        return {
            "id": model_id, "object": "model", "created": int(version.created), "owned_by": "llm-factory",
            "version": version.version, "ref": version.ref, "aliases": aliases, "formats": version.formats,
            "quantization": {key: _quantization(key) for key in version.formats},
            "context_length": int(serve.get("context_length") or 4096),
            "engine": _engine_name(version, serve),
            "loaded": version.ref in self.pool.loaded,
        }


def _engine_name(version, serve: dict) -> str | None:
    try:
        engine, _ = select_artifact(version, serve.get("engine", "auto"))
    except NoEngine:
        return None
    return "llamacpp" if engine.family == "gguf" else engine.family


COREML_COMPRESSION = {"int8": "8-bit linear", "palettize4": "4-bit palettized"}


def _quantization(format_key: str) -> str:
    """`mlx-q4-g64` -> `4-bit, group 64`; `coreml-float16-palettize4` -> `4-bit palettized, float16`; float formats
    -> their dtype."""
    parts = format_key.split("-")[1:]
    if format_key.startswith("coreml-") and len(parts) == 2:
        return f"{COREML_COMPRESSION.get(parts[1], parts[1])}, {parts[0]}"
    if parts and parts[0].startswith("q") and parts[0][1:].isdigit():
        group = f", group {parts[1][1:]}" if len(parts) > 1 and parts[1].startswith("g") else ""
        return f"{parts[0][1:]}-bit{group}"
    return "-".join(parts) or format_key
