"""Schemathesis hooks for tests/serving/test_openapi.py: most generated requests name the model the server serves,
so fuzzed sampling parameters reach the engine instead of stopping at 404; the rest keep their generated id, for the
404 path. Deterministic: a generated value is always steered the same way, so a seed reproduces a run."""
from __future__ import annotations

import zlib

import schemathesis

MODEL = "tiny"


def _steered(value) -> bool:
    return isinstance(value, str) and zlib.crc32(value.encode("utf-8", "surrogatepass")) % 4 != 0


@schemathesis.hook
def map_body(context, body):
    if isinstance(body, dict) and _steered(body.get("model")):
        return {**body, "model": MODEL}
    return body


@schemathesis.hook
def map_path_parameters(context, path_parameters):
    if isinstance(path_parameters, dict) and _steered(path_parameters.get("model_id")):
        return {**path_parameters, "model_id": MODEL}
    return path_parameters
