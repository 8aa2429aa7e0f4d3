"""The registry as the web UI shows it and changes it: GET /v1/registry/models[/{name}] (every version with its
aliases, formats and quantization, validation report and lineage: what `factory registry show` prints), and the
admin's POST /v1/admin/registry/models/{name}/promote and .../rollback (what `factory registry promote|rollback`
do). A change moves the registry's generation counter, so every worker's pool hot-reloads it and the event feed
tells it (serving/events/sources.py)."""
from __future__ import annotations

import asyncio
from typing import Any

from factory.registry import NotFound, Registry, RegistryError, Version
from serving.api.errors import APIError, invalid
from serving.api.schemas import read_json
from serving.api.schemas.ui import PromoteRequest, RollbackRequest

FULL_PRECISION = {"float16", "float32", "bfloat16", "f16", "f32", "bf16", "fp16", "fp32"}


class RegistryModels:
    def __init__(self, registry: Registry):
        self.registry = registry

    async def on_get(self, req, resp):
        models = await asyncio.to_thread(_all_models, self.registry)
        resp.media = {"object": "list", "data": models}

    async def on_get_one(self, req, resp, name: str):
        resp.media = await asyncio.to_thread(_one_model, self.registry, name)

    async def on_post_promote(self, req, resp, name: str):
        request: PromoteRequest = await read_json(req, PromoteRequest)
        selector = str(request.version)
        version = await _change(self.registry.promote, f"{name}@{selector}", request.alias)
        resp.media = version_object(version, await asyncio.to_thread(version.manifest))

    async def on_post_rollback(self, req, resp, name: str):
        request: RollbackRequest = await read_json(req, RollbackRequest)
        await _change(self.registry.resolve, name)  # an unknown model is a 404 before anything else
        version = await _change(self.registry.rollback, name, request.alias)
        resp.media = version_object(version, await asyncio.to_thread(version.manifest))


async def _change(operation, *args) -> Version:
    try:
        return await asyncio.to_thread(operation, *args)
    except NotFound as exc:
        raise APIError(404, str(exc), param="name", code="model_not_found") from None
    except RegistryError as exc:
        code = "nothing_to_roll_back" if "roll back" in str(exc) else "invalid_request"
        raise invalid(str(exc), code=code) from None


def _all_models(registry: Registry) -> list[dict[str, Any]]:
    return [_model(registry, name, versions) for name, versions in _by_name(registry.list()).items()]


def _one_model(registry: Registry, name: str) -> dict[str, Any]:
    versions = registry.list(name)
    if not versions:
        raise APIError(404, f"no model named {name!r} in the registry", param="name", code="model_not_found")
    return _model(registry, name, versions)


def _by_name(versions: list[Version]) -> dict[str, list[Version]]:
    grouped: dict[str, list[Version]] = {}
    for version in versions:
        grouped.setdefault(version.name, []).append(version)
    return grouped


def _model(registry: Registry, name: str, versions: list[Version]) -> dict[str, Any]:
    manifests = [version.manifest() for version in versions]
    return {"object": "registry.model", "name": name, "task": manifests[-1].get("task", "chat"),
            "aliases": registry.aliases(name),
            "versions": [version_object(v, m) for v, m in zip(versions, manifests)]}


def version_object(version: Version, manifest: dict[str, Any]) -> dict[str, Any]:
    return {"ref": version.ref, "name": version.name, "version": version.version, "created": version.created,
            "aliases": version.aliases, "spec_hash": version.spec_hash, "source_revision": version.source_revision,
            "flow_run_id": version.flow_run_id, "formats": [_format(key, manifest) for key in version.formats],
            "report": manifest.get("report") or {}, "lineage": manifest.get("lineage") or {}}


def _format(key: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """`gguf-q8_0` -> gguf, quantized q8_0; `mlx-float16` -> mlx, not quantized."""
    kind, _, variant = key.partition("-")
    files = manifest.get("artifacts", {}).get(key, {}).get("files", {})
    return {"key": key, "format": kind, "quantization": variant if variant and variant not in FULL_PRECISION else None,
            "bytes": sum(entry["size"] for entry in files.values())}
