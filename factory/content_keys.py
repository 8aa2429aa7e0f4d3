"""Content-keyed caching for heavy steps: a step's cache key is a digest of what it consumes.

A Prefect cache entry remembers a step's result (e.g. the path of a converted model); it is only worth anything
while that output is still on disk, so flows refresh the entry when the output has gone (`flows/caching.py`).
Stdlib only, like the rest of `factory/`: tasks key their cache entries and output directories with it, flows
their publishes and fine-tuning runs.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(*parts: Any) -> str:
    """A stable digest of JSON-serialisable parts (pydantic models are dumped first)."""
    plain = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
